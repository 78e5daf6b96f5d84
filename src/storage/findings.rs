//! Queries of `code_analysis_results`: the findings of each crew output.

use diesel::prelude::*;

use super::audit::{self, Change};
use super::models::{FindingRow, NewFindingRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::code_analysis_results as findings;
use super::{Conn, StorageError, crew_outputs, insert_returning_ids, now_micros, state, with_conn};

/// Rows per multi-row `INSERT` on PostgreSQL: 16 columns each keeps a
/// statement under the protocol's limit of 65,535 bind parameters.
const POSTGRES_INSERT_CHUNK: usize = 2_000;

/// Filters of `list`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FindingFilter {
    pub crew_output_id: Option<i64>,
    pub file_path: Option<String>,
    pub file_path_prefix: Option<String>,
    pub min_priority: Option<i32>,
    pub status: Option<i32>,
    pub rule_id: Option<String>,
}

/// Escapes `%`, `_` and `\` so that `text` matches itself in a `LIKE`
/// pattern whose escape character is `\`.
pub fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 1);
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// Inserts findings of existing crew outputs and returns their ids in the
/// order of `rows`. Call it inside a transaction: a batch is all or nothing.
pub fn insert_rows(conn: &mut Conn, rows: &[NewFindingRow]) -> Result<Vec<i64>, StorageError> {
    Ok(insert_returning_ids!(
        conn,
        findings::table,
        findings::id,
        rows,
        POSTGRES_INSERT_CHUNK
    ))
}

/// Stores a batch of findings for one crew output in one transaction.
pub fn insert_batch(
    conn: &mut Conn,
    crew_output_id: i64,
    rows: Vec<NewFindingRow>,
) -> Result<Vec<FindingRow>, StorageError> {
    let mut rows = rows;
    audit::transaction(conn, |conn| {
        let run = crew_outputs::get(conn, crew_output_id)?;
        let ids = state::insert_findings(conn, &run.crew_name, &mut rows)?;
        let summary = serde_json::json!({
            "count": ids.len(),
            "first_id": ids.first(),
            "last_id": ids.last(),
        });
        audit::append(
            conn,
            Change::of(
                "findings.record",
                "crew_output",
                crew_output_id,
                None,
                Some(&summary),
            ),
        )?;
        Ok(rows
            .into_iter()
            .zip(ids)
            .map(|(row, id)| stored_row(id, row))
            .collect())
    })
}

fn stored_row(id: i64, row: NewFindingRow) -> FindingRow {
    FindingRow {
        id,
        crew_output_id: row.crew_output_id,
        file_path: row.file_path,
        rule_id: row.rule_id,
        message: row.message,
        priority: row.priority,
        status: row.status,
        status_reason: row.status_reason,
        dismiss_reason: row.dismiss_reason,
        start_line: row.start_line,
        end_line: row.end_line,
        start_column: row.start_column,
        end_column: row.end_column,
        fingerprint: row.fingerprint,
        fingerprint_version: row.fingerprint_version,
        analysis: row.analysis,
        revision: 1,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

pub fn get(conn: &mut Conn, id: i64) -> Result<FindingRow, StorageError> {
    with_conn!(conn, c => {
        findings::table
            .find(id)
            .select(FindingRow::as_select())
            .first(c)
            .optional()?
            .ok_or_else(|| StorageError::not_found("finding", id))
    })
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = findings::table.into_boxed();
        if let Some(id) = filter.crew_output_id {
            query = query.filter(findings::crew_output_id.eq(id));
        }
        if let Some(path) = &filter.file_path {
            query = query.filter(findings::file_path.eq(path));
        }
        if let Some(prefix) = &filter.file_path_prefix {
            let pattern = format!("{}%", escape_like(prefix));
            query = query.filter(findings::file_path.like(pattern).escape('\\'));
        }
        if let Some(priority) = filter.min_priority {
            query = query.filter(findings::priority.ge(priority));
        }
        if let Some(status) = filter.status {
            query = query.filter(findings::status.eq(status));
        }
        if let Some(rule_id) = &filter.rule_id {
            query = query.filter(findings::rule_id.eq(rule_id));
        }
        query
    }};
}

/// Lists findings in the order they were recorded (by id). A filter by
/// path (`file_path` or `file_path_prefix`) lists by path instead, see
/// `list_by_path`.
pub fn list(
    conn: &mut Conn,
    filter: &FindingFilter,
    page: PageRequest,
) -> Result<Page<FindingRow>, StorageError> {
    with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(findings::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            query = query.filter(findings::id.gt(after.id));
        }
        let rows = query
            .order(findings::id.asc())
            .limit(page.size + 1)
            .select(FindingRow::as_select())
            .load(c)?;
        Ok(Page::from_rows(rows, page, total, |row: &FindingRow| Cursor {
            key: row.id,
            id: row.id,
        }))
    })
}

/// Position after the last finding of a page listed by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCursor {
    pub file_path: String,
    pub created_at: i64,
    pub id: i64,
}

impl PathCursor {
    pub fn of(row: &FindingRow) -> PathCursor {
        PathCursor {
            file_path: row.file_path.clone(),
            created_at: row.created_at,
            id: row.id,
        }
    }
}

/// Returns the smallest string above every string that starts with
/// `prefix`, in byte order, or `None` when there is none. UTF-8 byte order
/// is code point order, so the last character that has a successor is
/// replaced by it and the characters after it dropped.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => 0xE000,
            next => next,
        };
        if let Some(next) = char::from_u32(next) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Lists findings by path, then by time and id: the findings of one file
/// come together, oldest first. Paths compare byte by byte on both
/// backends. The file history index (and the run and path index, with a
/// run filter) returns rows in this order, so a page reads only the rows
/// it returns, however many match and however deep the page. `counted` is
/// the total that the listing's first page counted.
pub fn list_by_path(
    conn: &mut Conn,
    filter: &FindingFilter,
    size: i64,
    after: Option<&PathCursor>,
    counted: Option<i64>,
) -> Result<(Vec<FindingRow>, Option<PathCursor>, i64), StorageError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Bool, Text};

    // SQLite compares text with memcmp. PostgreSQL compares with the
    // collation of the database, so the order and the bounds use the
    // byte-wise operators of text_pattern_ops, the operator class of its
    // path indexes.
    let (order, at_least, above, below) = match conn.backend() {
        super::Backend::Sqlite => ("code_analysis_results.file_path", ">=", ">", "<"),
        super::Backend::Postgres => (
            "code_analysis_results.file_path USING ~<~",
            "~>=~",
            "~>~",
            "~<~",
        ),
    };
    // A prefix is the range [prefix, prefix_end) rather than a LIKE
    // pattern, and a cursor raises its start. With one lower bound, SQLite
    // starts the index range at the cursor. Given both a LIKE and a cursor
    // bound, it kept the LIKE bound and read every entry from the prefix to
    // the cursor (11 ms at 120,000 findings deep).
    let prefix = filter.file_path_prefix.as_deref();
    let lower = match (prefix, after) {
        (Some(prefix), Some(cursor)) if filter.file_path.is_none() => {
            Some(prefix.max(cursor.file_path.as_str()).to_string())
        }
        (Some(prefix), _) => Some(prefix.to_string()),
        (None, Some(cursor)) if filter.file_path.is_none() => Some(cursor.file_path.clone()),
        (None, _) => None,
    };
    let upper = prefix.and_then(prefix_end);
    let unprefixed = FindingFilter {
        file_path_prefix: None,
        ..filter.clone()
    };
    macro_rules! in_range {
        ($lower:expr) => {{
            let mut query = filtered!(&unprefixed);
            if let Some(lower) = $lower {
                query = query.filter(
                    sql::<Bool>(&format!("code_analysis_results.file_path {at_least} "))
                        .bind::<Text, _>(lower.to_string()),
                );
            }
            if let Some(upper) = &upper {
                query = query.filter(
                    sql::<Bool>(&format!("code_analysis_results.file_path {below} "))
                        .bind::<Text, _>(upper.clone()),
                );
            }
            query
        }};
    }

    with_conn!(conn, c => {
        // The total counts the whole prefix, not the rest after the cursor.
        let total = total_or_count(counted, || {
            count_bounded(in_range!(prefix).select(findings::id)).get_result(c)
        })?;
        let mut query = in_range!(lower.as_deref());
        match after {
            None => {}
            // One file: the index range starts at the cursor's time and id.
            Some(cursor) if filter.file_path.is_some() => {
                query = query.filter(
                    sql::<Bool>("(code_analysis_results.created_at, code_analysis_results.id) > (")
                        .bind::<BigInt, _>(cursor.created_at)
                        .sql(", ")
                        .bind::<BigInt, _>(cursor.id)
                        .sql(")"),
                );
            }
            // Within the cursor's path, the scan skips index entries up to
            // the cursor.
            Some(cursor) => {
                query = query.filter(
                    sql::<Bool>(&format!("(code_analysis_results.file_path {above} "))
                        .bind::<Text, _>(cursor.file_path.clone())
                        .sql(" OR (code_analysis_results.file_path = ")
                        .bind::<Text, _>(cursor.file_path.clone())
                        .sql(
                            " AND (code_analysis_results.created_at, code_analysis_results.id) > (",
                        )
                        .bind::<BigInt, _>(cursor.created_at)
                        .sql(", ")
                        .bind::<BigInt, _>(cursor.id)
                        .sql(")))"),
                );
            }
        }
        let mut rows: Vec<FindingRow> = query
            .order(sql::<Text>(order))
            .then_order_by((findings::created_at.asc(), findings::id.asc()))
            .limit(size + 1)
            .select(FindingRow::as_select())
            .load(c)?;
        let next = if rows.len() as i64 > size {
            rows.truncate(size.max(0) as usize);
            rows.last().map(PathCursor::of)
        } else {
            None
        };
        Ok((rows, next, total))
    })
}

/// Sets the status and its reason, and records them as the crew's triage
/// of the fingerprint, so later runs of the crew start from them. The
/// finding changes in one `UPDATE` that also adds one to the revision, so
/// concurrent updates from several replicas are each counted and the last
/// one wins.
pub fn update_status(
    conn: &mut Conn,
    id: i64,
    status: i32,
    reason: &str,
    dismiss_reason: i32,
) -> Result<FindingRow, StorageError> {
    audit::transaction(conn, |conn| {
        let before = get(conn, id)?;
        let updated = set_status(conn, id, status, reason, dismiss_reason)?;
        audit::append(
            conn,
            Change::of(
                "finding.update",
                "finding",
                id,
                Some(&before),
                Some(&updated),
            ),
        )?;
        let run = crew_outputs::get(conn, updated.crew_output_id)?;
        state::record_triage(
            conn,
            &run.crew_name,
            &updated.fingerprint,
            status,
            reason,
            dismiss_reason,
            id,
        )?;
        Ok(updated)
    })
}

fn set_status(
    conn: &mut Conn,
    id: i64,
    status: i32,
    reason: &str,
    dismiss_reason: i32,
) -> Result<FindingRow, StorageError> {
    with_conn!(conn, c => {
        diesel::update(findings::table.find(id))
            .set((
                findings::status.eq(status),
                findings::status_reason.eq(reason),
                findings::dismiss_reason.eq(dismiss_reason),
                findings::revision.eq(findings::revision + 1),
                findings::updated_at.eq(now_micros()),
            ))
            .returning(FindingRow::as_returning())
            .get_result(c)
            .optional()?
            .ok_or_else(|| StorageError::not_found("finding", id))
    })
}

#[cfg(test)]
mod tests {
    use super::{escape_like, prefix_end};

    #[test]
    fn prefix_end_follows_every_match() {
        assert_eq!(prefix_end("lib/").as_deref(), Some("lib0"));
        assert_eq!(prefix_end("src/é").as_deref(), Some("src/ê"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(escape_like("lib/a_b%c\\d"), "lib/a\\_b\\%c\\\\d");
        assert_eq!(escape_like("src/"), "src/");
    }
}
