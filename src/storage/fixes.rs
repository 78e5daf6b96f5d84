//! Queries of `error_handling_results` (fixes) and of `fix_findings`, the
//! links from a fix to the findings it addresses.

use std::collections::{BTreeSet, HashMap};

use diesel::prelude::*;

use super::audit::{self, Change};
use super::models::{FixFindingRow, FixRow, FixWithFindings, NewFixRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::{code_analysis_results, error_handling_results as fixes, fix_findings};
use super::{Conn, StorageError, crew_outputs, insert_returning_ids, now_micros, with_conn};

/// Filters of `list`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FixFilter {
    pub crew_output_id: Option<i64>,
    pub file_path: Option<String>,
    pub status: Option<i32>,
}

/// Changes of `update`; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct FixChanges {
    pub status: Option<i32>,
    pub description: Option<String>,
    pub finding_ids: Option<Vec<i64>>,
}

/// Rows per multi-row `INSERT` on PostgreSQL: 7 columns each keeps a
/// statement under the protocol's limit of 65,535 bind parameters.
const POSTGRES_INSERT_CHUNK: usize = 5_000;

/// Inserts fixes of existing crew outputs and returns their ids in the
/// order of `rows`. Call it inside a transaction with `insert_links`.
pub fn insert_rows(conn: &mut Conn, rows: &[NewFixRow]) -> Result<Vec<i64>, StorageError> {
    Ok(insert_returning_ids!(
        conn,
        fixes::table,
        fixes::id,
        rows,
        POSTGRES_INSERT_CHUNK
    ))
}

/// Links fixes to findings; the pairs must name existing rows.
pub fn insert_links(conn: &mut Conn, links: &[FixFindingRow]) -> Result<(), StorageError> {
    match conn {
        Conn::Sqlite(c) => {
            for link in links {
                diesel::insert_into(fix_findings::table)
                    .values(link)
                    .execute(&mut **c)?;
            }
        }
        Conn::Postgres(c) => {
            for chunk in links.chunks(10_000) {
                diesel::insert_into(fix_findings::table)
                    .values(chunk)
                    .execute(&mut **c)?;
            }
        }
    }
    Ok(())
}

/// Fails unless every id names a finding of `crew_output_id`.
fn check_findings(
    conn: &mut Conn,
    crew_output_id: i64,
    finding_ids: &BTreeSet<i64>,
) -> Result<(), StorageError> {
    if finding_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = finding_ids.iter().copied().collect();
    let found: Vec<i64> = with_conn!(conn, c => {
        code_analysis_results::table
            .filter(code_analysis_results::id.eq_any(&ids))
            .filter(code_analysis_results::crew_output_id.eq(crew_output_id))
            .select(code_analysis_results::id)
            .load(c)?
    });
    let found: BTreeSet<i64> = found.into_iter().collect();
    let missing: Vec<String> = finding_ids
        .difference(&found)
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StorageError::NotFound {
            resource: "finding",
            id: format!("{} in crew output {crew_output_id}", missing.join(", ")),
        })
    }
}

fn replace_links(
    conn: &mut Conn,
    fix_id: i64,
    finding_ids: &BTreeSet<i64>,
) -> Result<(), StorageError> {
    with_conn!(conn, c => {
        diesel::delete(fix_findings::table.filter(fix_findings::fix_id.eq(fix_id))).execute(c)?
    });
    let links: Vec<FixFindingRow> = finding_ids
        .iter()
        .map(|&finding_id| FixFindingRow { fix_id, finding_id })
        .collect();
    insert_links(conn, &links)
}

/// Stores a fix and its links to findings of the same crew output.
pub fn insert(
    conn: &mut Conn,
    row: NewFixRow,
    finding_ids: Vec<i64>,
) -> Result<FixWithFindings, StorageError> {
    let finding_ids: BTreeSet<i64> = finding_ids.into_iter().collect();
    audit::transaction(conn, |conn| {
        crew_outputs::ensure_exists(conn, row.crew_output_id)?;
        check_findings(conn, row.crew_output_id, &finding_ids)?;
        let id = insert_rows(conn, std::slice::from_ref(&row))?[0];
        replace_links(conn, id, &finding_ids)?;
        let created = get(conn, id)?;
        let after = serde_json::json!({ "fix": created.fix, "finding_ids": created.finding_ids });
        audit::append(
            conn,
            Change::of("fix.create", "fix", id, None, Some(&after)),
        )?;
        Ok(created)
    })
}

/// Loads the linked finding ids of each fix, ascending.
fn finding_ids_of(
    conn: &mut Conn,
    fix_ids: &[i64],
) -> Result<HashMap<i64, Vec<i64>>, StorageError> {
    let links: Vec<(i64, i64)> = with_conn!(conn, c => {
        fix_findings::table
            .filter(fix_findings::fix_id.eq_any(fix_ids))
            .order((fix_findings::fix_id, fix_findings::finding_id))
            .select((fix_findings::fix_id, fix_findings::finding_id))
            .load(c)?
    });
    let mut by_fix: HashMap<i64, Vec<i64>> = HashMap::new();
    for (fix_id, finding_id) in links {
        by_fix.entry(fix_id).or_default().push(finding_id);
    }
    Ok(by_fix)
}

/// Pairs each fix with its linked finding ids, keeping the order of `rows`.
pub fn with_findings(
    conn: &mut Conn,
    rows: Vec<FixRow>,
) -> Result<Vec<FixWithFindings>, StorageError> {
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let mut by_fix = finding_ids_of(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|fix| FixWithFindings {
            finding_ids: by_fix.remove(&fix.id).unwrap_or_default(),
            fix,
        })
        .collect())
}

pub fn get(conn: &mut Conn, id: i64) -> Result<FixWithFindings, StorageError> {
    let row: FixRow = with_conn!(conn, c => {
        fixes::table
            .find(id)
            .select(FixRow::as_select())
            .first(c)
            .optional()?
            .ok_or_else(|| StorageError::not_found("fix", id))?
    });
    let mut found = with_findings(conn, vec![row])?;
    Ok(found.remove(0))
}

/// Reads a fix and, on PostgreSQL, locks its row until the transaction
/// ends, so concurrent updates on several replicas apply one after another.
fn get_for_update(conn: &mut Conn, id: i64) -> Result<FixRow, StorageError> {
    let found = match conn {
        Conn::Sqlite(c) => fixes::table
            .find(id)
            .select(FixRow::as_select())
            .first(&mut **c)
            .optional()?,
        Conn::Postgres(c) => fixes::table
            .find(id)
            .select(FixRow::as_select())
            .for_update()
            .first(&mut **c)
            .optional()?,
    };
    found.ok_or_else(|| StorageError::not_found("fix", id))
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = fixes::table.into_boxed();
        if let Some(id) = filter.crew_output_id {
            query = query.filter(fixes::crew_output_id.eq(id));
        }
        if let Some(path) = &filter.file_path {
            query = query.filter(fixes::file_path.eq(path));
        }
        if let Some(status) = filter.status {
            query = query.filter(fixes::status.eq(status));
        }
        query
    }};
}

/// Lists fixes in the order they were recorded (by id).
pub fn list(
    conn: &mut Conn,
    filter: &FixFilter,
    page: PageRequest,
) -> Result<Page<FixWithFindings>, StorageError> {
    let (total, rows) = with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(fixes::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            query = query.filter(fixes::id.gt(after.id));
        }
        let rows: Vec<FixRow> = query
            .order(fixes::id.asc())
            .limit(page.size + 1)
            .select(FixRow::as_select())
            .load(c)?;
        (total, rows)
    });
    let page = Page::from_rows(rows, page, total, |row: &FixRow| Cursor {
        key: row.id,
        id: row.id,
    });
    Ok(Page {
        items: with_findings(conn, page.items)?,
        next: page.next,
        total: page.total,
    })
}

/// Applies `changes` in one transaction.
pub fn update(
    conn: &mut Conn,
    id: i64,
    changes: FixChanges,
) -> Result<FixWithFindings, StorageError> {
    audit::transaction(conn, |conn| {
        let current = get_for_update(conn, id)?;
        let status = changes.status.unwrap_or(current.status);
        let description = changes
            .description
            .unwrap_or_else(|| current.description.clone());
        with_conn!(conn, c => {
            diesel::update(fixes::table.find(id))
                .set((
                    fixes::status.eq(status),
                    fixes::description.eq(&description),
                    fixes::revision.eq(fixes::revision + 1),
                    fixes::updated_at.eq(now_micros()),
                ))
                .execute(c)?
        });
        if let Some(finding_ids) = changes.finding_ids {
            let finding_ids: BTreeSet<i64> = finding_ids.into_iter().collect();
            check_findings(conn, current.crew_output_id, &finding_ids)?;
            replace_links(conn, id, &finding_ids)?;
        }
        let updated = get(conn, id)?;
        let after = serde_json::json!({ "fix": updated.fix, "finding_ids": updated.finding_ids });
        let before = serde_json::json!({ "fix": current });
        audit::append(
            conn,
            Change::of("fix.update", "fix", id, Some(&before), Some(&after)),
        )?;
        Ok(updated)
    })
}
