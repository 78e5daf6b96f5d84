//! Queries of `log_entries`: batched, idempotent ingest and filtered reads.

use std::collections::BTreeSet;

use diesel::prelude::*;

use super::models::{LogEntryRow, NewLogEntryRow};
use super::paging::{Cursor, MAX_COUNTED_ROWS, Page, PageRequest};
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

        let inserted = match conn {
            // SQLite: one cached prepared statement per row. The affected
            // row count distinguishes an insert from a duplicate.
            Conn::Sqlite(c) => {
                let mut inserted = 0;
                for row in &kept {
                    inserted += diesel::insert_into(log_entries::table)
                        .values(*row)
                        .on_conflict(log_entries::entry_id)
                        .do_nothing()
                        .execute(&mut **c)?;
                }
                inserted
            }
            Conn::Postgres(c) => {
                let owned: Vec<NewLogEntryRow> = kept.iter().map(|row| (*row).clone()).collect();
                let mut inserted = 0;
                for chunk in owned.chunks(POSTGRES_INSERT_CHUNK) {
                    inserted += diesel::insert_into(log_entries::table)
                        .values(chunk)
                        .on_conflict(log_entries::entry_id)
                        .do_nothing()
                        .execute(&mut **c)?;
                }
                inserted
            }
        };
        outcome.inserted = inserted as u64;
        outcome.duplicates = (kept.len() - inserted) as u64;
        Ok(outcome)
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

/// Lists entries newest first, by `(timestamp, id)`.
pub fn query(
    conn: &mut Conn,
    filter: &LogFilter,
    page: PageRequest,
) -> Result<Page<LogEntryRow>, StorageError> {
    with_conn!(conn, c => {
        let total = filtered!(filter)
            .select(log_entries::id)
            .limit(MAX_COUNTED_ROWS)
            .load::<i64>(c)?
            .len() as i64;
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
