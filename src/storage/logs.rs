//! Queries of `log_entries`: batched, idempotent ingest and filtered reads.

use std::collections::BTreeSet;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;

use super::models::{LogEntryRow, NewLogEntryRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::{crew_outputs, log_entries};
use super::{Conn, StorageError, findings::escape_like, transaction, with_conn};

/// Rows per multi-row `INSERT` on PostgreSQL: 10 columns each keeps a
/// statement under the protocol's limit of 65,535 bind parameters.
const POSTGRES_INSERT_CHUNK: usize = 5_000;

/// Outcome of one row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOutcome {
    Inserted,
    /// Its `entry_id` was stored before; the row was not stored again.
    Duplicate,
    /// It names a crew output that does not exist; the row was not stored.
    MissingCrewOutput,
}

/// Counts of one batch, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub inserted: u64,
    pub duplicates: u64,
    /// Indexes into the batch of the rows whose crew output does not exist.
    pub missing_crew_output: Vec<usize>,
}

/// Filters of `query`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogFilter {
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub min_severity: Option<i32>,
    pub crew_name: Option<String>,
    pub crew_output_id: Option<i64>,
    pub message_contains: Option<String>,
}

/// Returns the crew output ids among `ids` that do not exist.
fn missing_crew_outputs(
    conn: &mut Conn,
    ids: &BTreeSet<i64>,
) -> Result<BTreeSet<i64>, StorageError> {
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let wanted: Vec<i64> = ids.iter().copied().collect();
    let found: Vec<i64> = with_conn!(conn, c => {
        crew_outputs::table
            .filter(crew_outputs::id.eq_any(&wanted))
            .select(crew_outputs::id)
            .load(c)?
    });
    let found: BTreeSet<i64> = found.into_iter().collect();
    Ok(ids.difference(&found).copied().collect())
}

/// Stores a batch in one transaction. A row whose `entry_id` is already
/// stored, in this batch or before, is skipped and counted as a duplicate;
/// `ON CONFLICT DO NOTHING` makes this hold across concurrent writers too.
pub fn insert_batch(
    conn: &mut Conn,
    rows: &[NewLogEntryRow],
) -> Result<BatchOutcome, StorageError> {
    insert_rows(conn, rows, false).map(|(outcome, _)| outcome)
}

/// Stores a batch like `insert_batch` and also returns the rows it stored,
/// with their ids, ordered by id. Skipped rows are not returned.
pub fn insert_batch_returning(
    conn: &mut Conn,
    rows: &[NewLogEntryRow],
) -> Result<(BatchOutcome, Vec<LogEntryRow>), StorageError> {
    insert_rows(conn, rows, true)
}

/// Stores a batch and returns the stored rows only when `keep_stored` is
/// set, because reading them back costs time on every ingest.
fn insert_rows(
    conn: &mut Conn,
    rows: &[NewLogEntryRow],
    keep_stored: bool,
) -> Result<(BatchOutcome, Vec<LogEntryRow>), StorageError> {
    transaction(conn, |conn| {
        let referenced: BTreeSet<i64> = rows.iter().filter_map(|row| row.crew_output_id).collect();
        let missing = missing_crew_outputs(conn, &referenced)?;
        let mut outcome = BatchOutcome::default();
        let mut kept: Vec<&NewLogEntryRow> = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            match row.crew_output_id {
                Some(id) if missing.contains(&id) => outcome.missing_crew_output.push(index),
                _ => kept.push(row),
            }
        }

        let mut stored: Vec<LogEntryRow> = Vec::new();
        let inserted = match conn {
            // SQLite: one cached prepared statement per row. The affected
            // row count, or the returned row, distinguishes an insert from
            // a duplicate.
            Conn::Sqlite(c) => {
                let mut inserted = 0;
                for row in &kept {
                    let insert = diesel::insert_into(log_entries::table)
                        .values(*row)
                        .on_conflict(log_entries::entry_id)
                        .do_nothing();
                    if keep_stored {
                        let returned = insert
                            .returning(LogEntryRow::as_returning())
                            .get_result(&mut **c)
                            .optional()?;
                        if let Some(returned) = returned {
                            stored.push(returned);
                            inserted += 1;
                        }
                    } else {
                        inserted += insert.execute(&mut **c)?;
                    }
                }
                inserted
            }
            // PostgreSQL: `RETURNING` after `ON CONFLICT DO NOTHING` lists
            // only the rows that were inserted.
            Conn::Postgres(c) => {
                let owned: Vec<NewLogEntryRow> = kept.iter().map(|row| (*row).clone()).collect();
                let mut inserted = 0;
                for chunk in owned.chunks(POSTGRES_INSERT_CHUNK) {
                    let insert = diesel::insert_into(log_entries::table)
                        .values(chunk)
                        .on_conflict(log_entries::entry_id)
                        .do_nothing();
                    if keep_stored {
                        let returned: Vec<LogEntryRow> = insert
                            .returning(LogEntryRow::as_returning())
                            .get_results(&mut **c)?;
                        inserted += returned.len();
                        stored.extend(returned);
                    } else {
                        inserted += insert.execute(&mut **c)?;
                    }
                }
                stored.sort_unstable_by_key(|row| row.id);
                inserted
            }
        };
        outcome.inserted = inserted as u64;
        outcome.duplicates = (kept.len() - inserted) as u64;
        Ok((outcome, stored))
    })
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = log_entries::table.into_boxed();
        if let Some(start) = filter.start_time {
            query = query.filter(log_entries::timestamp.ge(start));
        }
        if let Some(end) = filter.end_time {
            query = query.filter(log_entries::timestamp.lt(end));
        }
        if let Some(severity) = filter.min_severity {
            query = query.filter(log_entries::severity_number.ge(severity));
        }
        if let Some(name) = &filter.crew_name {
            query = query.filter(log_entries::crew_name.eq(name));
        }
        if let Some(id) = filter.crew_output_id {
            query = query.filter(log_entries::crew_output_id.eq(id));
        }
        if let Some(text) = &filter.message_contains {
            let pattern = format!("%{}%", escape_like(text));
            query = query.filter(log_entries::message.like(pattern).escape('\\'));
        }
        query
    }};
}

impl LogFilter {
    /// Returns whether `row` passes the filter: the same test as the SQL
    /// conditions of `query` and `list_oldest_first`, for entries that are
    /// already in memory.
    pub fn matches(&self, row: &LogEntryRow) -> bool {
        self.start_time.is_none_or(|start| row.timestamp >= start)
            && self.end_time.is_none_or(|end| row.timestamp < end)
            && self
                .min_severity
                .is_none_or(|severity| row.severity_number >= severity)
            && self
                .crew_name
                .as_ref()
                .is_none_or(|name| row.crew_name == *name)
            && self
                .crew_output_id
                .is_none_or(|id| row.crew_output_id == Some(id))
            && self
                .message_contains
                .as_ref()
                .is_none_or(|text| row.message.contains(text.as_str()))
    }
}

/// Lists up to `limit` entries after `after`, oldest first, by
/// `(timestamp, id)`, without counting the matches.
pub fn list_oldest_first(
    conn: &mut Conn,
    filter: &LogFilter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<LogEntryRow>, StorageError> {
    with_conn!(conn, c => {
        let mut query = filtered!(filter);
        if let Some(after) = after {
            query = query.filter(
                log_entries::timestamp
                    .gt(after.key)
                    .or(log_entries::timestamp.eq(after.key).and(log_entries::id.gt(after.id))),
            );
        }
        let rows = query
            .order((log_entries::timestamp.asc(), log_entries::id.asc()))
            .limit(limit)
            .select(LogEntryRow::as_select())
            .load(c)?;
        Ok(rows)
    })
}

/// Runs `work` in a read-only transaction that reads one snapshot of the
/// database. The snapshot is taken before `work` starts, and `on_snapshot`
/// runs right after it is taken, so a caller can tell which writes the
/// snapshot contains. The result of `on_snapshot` is passed to `work`.
///
/// PostgreSQL uses REPEATABLE READ, whose snapshot is taken by the first
/// statement. SQLite in WAL mode takes the snapshot when a deferred
/// transaction first reads the database file.
pub fn read_snapshot<S, T>(
    conn: &mut Conn,
    on_snapshot: impl FnOnce() -> S,
    work: impl FnOnce(&mut Conn, S) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    match conn {
        Conn::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(&mut **c, "BEGIN DEFERRED")?
        }
        Conn::Postgres(c) => AnsiTransactionManager::begin_transaction_sql(
            &mut **c,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )?,
    }
    let result = with_conn!(&mut *conn, c => {
        log_entries::table
            .select(log_entries::id)
            .limit(1)
            .load::<i64>(c)
            .map_err(StorageError::from)
    })
    .and_then(|_| {
        let snapshot_note = on_snapshot();
        work(conn, snapshot_note)
    });
    let ended = match result {
        Ok(_) => with_conn!(&mut *conn, c => AnsiTransactionManager::commit_transaction(c)),
        Err(_) => with_conn!(&mut *conn, c => AnsiTransactionManager::rollback_transaction(c)),
    };
    let value = result?;
    ended?;
    Ok(value)
}

/// Lists entries newest first, by `(timestamp, id)`.
pub fn query(
    conn: &mut Conn,
    filter: &LogFilter,
    page: PageRequest,
) -> Result<Page<LogEntryRow>, StorageError> {
    with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(log_entries::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            // The first condition repeats what the second implies, as a
            // range that the planner can read from an index.
            query = query.filter(log_entries::timestamp.le(after.key)).filter(
                log_entries::timestamp
                    .lt(after.key)
                    .or(log_entries::timestamp.eq(after.key).and(log_entries::id.lt(after.id))),
            );
        }
        let rows = query
            .order((log_entries::timestamp.desc(), log_entries::id.desc()))
            .limit(page.size + 1)
            .select(LogEntryRow::as_select())
            .load(c)?;
        Ok(Page::from_rows(rows, page, total, |row: &LogEntryRow| Cursor {
            key: row.timestamp,
            id: row.id,
        }))
    })
}
