//! Queries of `crew_outputs`, one row per crew run.

use diesel::prelude::*;

use super::audit::{self, Change};
use super::models::{CrewOutputRow, NewCrewOutputRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::{
    code_analysis_results as findings, crew_outputs, error_handling_results as fixes, fix_findings,
    log_entries,
};
use super::{Conn, StorageError, now_micros, state, with_conn};
use crate::pb::CrewOutputStatus;

/// Filters of `list`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CrewOutputFilter {
    pub crew_name: Option<String>,
    pub output_type: Option<String>,
    pub status: Option<i32>,
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
}

/// Changes of `update`; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct CrewOutputChanges {
    pub status: Option<CrewOutputStatus>,
    pub results: Option<String>,
    pub output_type: Option<String>,
    pub error_message: Option<String>,
    pub keep: Option<bool>,
}

/// A deleted crew output as it was before the deletion, with the number of
/// records deleted with it.
#[derive(Debug, Clone)]
pub struct DeletedCrewOutput {
    pub crew_output: CrewOutputRow,
    pub findings: i64,
    pub fixes: i64,
    /// Links between a fix and a finding where either belongs to the run.
    pub fix_links: i64,
    pub log_entries: i64,
}

/// Whether a run may move from `from` to `to`. Staying in the same status
/// is allowed, so a client can repeat an update safely.
pub fn transition_allowed(from: CrewOutputStatus, to: CrewOutputStatus) -> bool {
    use CrewOutputStatus::*;
    match (from, to) {
        _ if from == to => true,
        (Pending, Running | Succeeded | Failed | Cancelled) => true,
        (Running, Succeeded | Failed | Cancelled) => true,
        _ => false,
    }
}

pub fn is_final(status: CrewOutputStatus) -> bool {
    matches!(
        status,
        CrewOutputStatus::Succeeded | CrewOutputStatus::Failed | CrewOutputStatus::Cancelled
    )
}

/// Builds a new row whose start and finish times follow from its status.
pub fn new_row(
    crew_name: String,
    output_type: String,
    status: CrewOutputStatus,
    results: String,
    error_message: String,
) -> NewCrewOutputRow {
    let now = now_micros();
    NewCrewOutputRow {
        crew_name,
        output_type,
        status: status as i32,
        results,
        error_message,
        started_at: (status == CrewOutputStatus::Running).then_some(now),
        finished_at: is_final(status).then_some(now),
        created_at: now,
        updated_at: now,
        keep: 0,
    }
}

pub fn insert(conn: &mut Conn, row: &NewCrewOutputRow) -> Result<CrewOutputRow, StorageError> {
    with_conn!(conn, c => {
        Ok(diesel::insert_into(crew_outputs::table)
            .values(row)
            .returning(CrewOutputRow::as_returning())
            .get_result(c)?)
    })
}

/// Inserts a crew output and its audit event in one transaction.
pub fn create(conn: &mut Conn, row: &NewCrewOutputRow) -> Result<CrewOutputRow, StorageError> {
    audit::transaction(conn, |conn| {
        let created = insert(conn, row)?;
        audit::append(
            conn,
            Change::of(
                "crew_output.create",
                "crew_output",
                created.id,
                None,
                Some(&created),
            ),
        )?;
        Ok(created)
    })
}

pub fn get(conn: &mut Conn, id: i64) -> Result<CrewOutputRow, StorageError> {
    with_conn!(conn, c => {
        crew_outputs::table
            .find(id)
            .select(CrewOutputRow::as_select())
            .first(c)
            .optional()?
            .ok_or_else(|| StorageError::not_found("crew output", id))
    })
}

/// Reads a crew output and locks its row until the transaction ends, so a
/// concurrent update on another replica waits instead of being overwritten.
/// SQLite needs no row lock: its write transactions already run one at a time.
fn get_for_update(conn: &mut Conn, id: i64) -> Result<CrewOutputRow, StorageError> {
    let found = match conn {
        Conn::Sqlite(c) => crew_outputs::table
            .find(id)
            .select(CrewOutputRow::as_select())
            .first(&mut **c)
            .optional()?,
        Conn::Postgres(c) => crew_outputs::table
            .find(id)
            .select(CrewOutputRow::as_select())
            .for_update()
            .first(&mut **c)
            .optional()?,
    };
    found.ok_or_else(|| StorageError::not_found("crew output", id))
}

/// Fails with NotFound unless the crew output exists.
pub fn ensure_exists(conn: &mut Conn, id: i64) -> Result<(), StorageError> {
    let found: Option<i64> = with_conn!(conn, c => {
        crew_outputs::table
            .find(id)
            .select(crew_outputs::id)
            .first(c)
            .optional()?
    });
    found
        .map(|_| ())
        .ok_or_else(|| StorageError::not_found("crew output", id))
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = crew_outputs::table.into_boxed();
        if let Some(name) = &filter.crew_name {
            query = query.filter(crew_outputs::crew_name.eq(name));
        }
        if let Some(output_type) = &filter.output_type {
            query = query.filter(crew_outputs::output_type.eq(output_type));
        }
        if let Some(status) = filter.status {
            query = query.filter(crew_outputs::status.eq(status));
        }
        if let Some(after) = filter.created_after {
            query = query.filter(crew_outputs::created_at.ge(after));
        }
        if let Some(before) = filter.created_before {
            query = query.filter(crew_outputs::created_at.lt(before));
        }
        query
    }};
}

/// Lists crew outputs newest first (by id, which grows with creation).
pub fn list(
    conn: &mut Conn,
    filter: &CrewOutputFilter,
    page: PageRequest,
) -> Result<Page<CrewOutputRow>, StorageError> {
    with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(crew_outputs::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            query = query.filter(crew_outputs::id.lt(after.id));
        }
        let rows = query
            .order(crew_outputs::id.desc())
            .limit(page.size + 1)
            .select(CrewOutputRow::as_select())
            .load(c)?;
        Ok(Page::from_rows(rows, page, total, |row: &CrewOutputRow| Cursor {
            key: row.id,
            id: row.id,
        }))
    })
}

/// Applies `changes` in one transaction, checking the status transition
/// against the stored status.
pub fn update(
    conn: &mut Conn,
    id: i64,
    changes: CrewOutputChanges,
) -> Result<CrewOutputRow, StorageError> {
    audit::transaction(conn, |conn| {
        let current = get_for_update(conn, id)?;

        let mut next = current.clone();
        let now = now_micros();
        if let Some(status) = changes.status {
            let from =
                CrewOutputStatus::try_from(current.status).unwrap_or(CrewOutputStatus::Unspecified);
            if !transition_allowed(from, status) {
                return Err(StorageError::FailedPrecondition(format!(
                    "crew output {id} cannot move from {} to {}",
                    from.as_str_name(),
                    status.as_str_name()
                )));
            }
            if status != from {
                next.status = status as i32;
                if status == CrewOutputStatus::Running {
                    next.started_at = Some(now);
                }
                if is_final(status) {
                    next.finished_at = Some(now);
                }
            }
        }
        if let Some(results) = changes.results {
            next.results = results;
        }
        if let Some(output_type) = changes.output_type {
            next.output_type = output_type;
        }
        if let Some(error_message) = changes.error_message {
            next.error_message = error_message;
        }
        if let Some(keep) = changes.keep {
            next.keep = i32::from(keep);
        }
        let unchanged = next.status == current.status
            && next.results == current.results
            && next.output_type == current.output_type
            && next.error_message == current.error_message
            && next.keep == current.keep;
        if unchanged {
            // Nothing to write: the revision counts changes, not calls.
            return Ok(current);
        }

        let updated: Result<CrewOutputRow, StorageError> = with_conn!(conn, c => Ok(diesel::update(crew_outputs::table.find(id))
            .set((
                crew_outputs::status.eq(next.status),
                crew_outputs::results.eq(&next.results),
                crew_outputs::output_type.eq(&next.output_type),
                crew_outputs::error_message.eq(&next.error_message),
                crew_outputs::started_at.eq(next.started_at),
                crew_outputs::finished_at.eq(next.finished_at),
                crew_outputs::keep.eq(next.keep),
                crew_outputs::revision.eq(crew_outputs::revision + 1),
                crew_outputs::updated_at.eq(now),
            ))
            .returning(CrewOutputRow::as_returning())
            .get_result(c)?));
        let updated = updated?;
        audit::append(
            conn,
            Change::of(
                "crew_output.update",
                "crew_output",
                id,
                Some(&current),
                Some(&updated),
            ),
        )?;
        if updated.status != current.status {
            state::analyze_finished_run(conn, &updated)?;
        }
        Ok(updated)
    })
}

/// Deletes a crew output with its findings, fixes, fix links and log
/// entries (the foreign keys cascade) and appends an audit event, in one
/// transaction. A run marked keep is FailedPrecondition unless `force` is
/// set. Tasks that produced the run stay, without their crew output.
///
/// NOTE: the whole run goes in one transaction, so on SQLite every other
/// write waits until a run with very many findings is deleted. Retention
/// deletes in batches instead.
pub fn delete(conn: &mut Conn, id: i64, force: bool) -> Result<DeletedCrewOutput, StorageError> {
    audit::transaction(conn, |conn| {
        let current = get_for_update(conn, id)?;
        if current.keep != 0 && !force {
            return Err(StorageError::FailedPrecondition(format!(
                "crew output {id} is marked keep; set force to delete it"
            )));
        }

        let deleted = with_conn!(conn, c => {
            let run_findings = findings::table
                .filter(findings::crew_output_id.eq(id))
                .select(findings::id);
            let run_fixes = fixes::table
                .filter(fixes::crew_output_id.eq(id))
                .select(fixes::id);
            let fix_links: i64 = fix_findings::table
                .filter(
                    fix_findings::fix_id
                        .eq_any(run_fixes)
                        .or(fix_findings::finding_id.eq_any(run_findings)),
                )
                .count()
                .get_result(c)?;
            let counted = DeletedCrewOutput {
                findings: run_findings.count().get_result(c)?,
                fixes: run_fixes.count().get_result(c)?,
                fix_links,
                log_entries: log_entries::table
                    .filter(log_entries::crew_output_id.eq(id))
                    .count()
                    .get_result(c)?,
                crew_output: current,
            };
            diesel::delete(crew_outputs::table.find(id)).execute(c)?;
            counted
        });

        audit::append(
            conn,
            Change::of(
                "crew_output.delete",
                "crew_output",
                id,
                Some(&deleted.crew_output),
                None,
            ),
        )?;
        Ok(deleted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CrewOutputStatus::*;

    #[test]
    fn transitions_follow_life_cycle() {
        assert!(transition_allowed(Pending, Running));
        assert!(transition_allowed(Running, Succeeded));
        assert!(transition_allowed(Pending, Cancelled));
        assert!(transition_allowed(Running, Running));
        assert!(!transition_allowed(Succeeded, Running));
        assert!(!transition_allowed(Failed, Succeeded));
        assert!(!transition_allowed(Running, Pending));
        assert!(!transition_allowed(Cancelled, Pending));
    }
}
