//! Queries of `tasks`, the crews' work queue with leases.
//!
//! A claim is one `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`:
//! on PostgreSQL the inner select takes `FOR UPDATE SKIP LOCKED`, so
//! concurrent claims on several replicas pass over each other's rows; on
//! SQLite, write transactions run one at a time, so the statement alone is
//! atomic. Every call that acts on a claimed task matches its lease token
//! in the same statement or transaction that changes it.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::audit::{self, Change};
use super::imports::{self, RunImport};
use super::models::{NewTaskRow, TaskRow};
use super::paging::{Cursor, Page, PageRequest, count_bounded, total_or_count};
use super::schema::tasks;
use super::{Conn, StorageError, with_conn};
use crate::pb::TaskState;

/// Maximum wait between two attempts, in milliseconds.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

/// Filters of `list`; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TaskFilter {
    pub queue: Option<String>,
    pub state: Option<i32>,
    pub worker: Option<String>,
}

/// A claim request, with the lease already resolved to times.
#[derive(Debug, Clone)]
pub struct Claim {
    pub queue: String,
    pub worker: String,
    pub max_tasks: i64,
    pub lease_token: String,
    pub now: i64,
    pub lease_expires_at: i64,
}

/// Delay before the next attempt after `attempts` claims: the base delay
/// doubled per earlier attempt, capped at `MAX_BACKOFF_MS`.
pub fn backoff_ms(base_ms: i64, attempts: i32) -> i64 {
    let doublings = attempts.saturating_sub(1).clamp(0, 40) as u32;
    base_ms
        .saturating_mul(1_i64 << doublings)
        .min(MAX_BACKOFF_MS)
}

fn state_name(state: i32) -> &'static str {
    TaskState::try_from(state)
        .map(|state| state.as_str_name())
        .unwrap_or("TASK_STATE_UNSPECIFIED")
}

pub fn get(conn: &mut Conn, id: i64) -> Result<TaskRow, StorageError> {
    with_conn!(conn, c => {
        tasks::table
            .find(id)
            .select(TaskRow::as_select())
            .first(c)
            .optional()?
            .ok_or_else(|| StorageError::not_found("task", id))
    })
}

fn active_with_key(
    conn: &mut Conn,
    queue: &str,
    key: &str,
) -> Result<Option<TaskRow>, StorageError> {
    let active = [TaskState::Queued as i32, TaskState::Leased as i32];
    with_conn!(conn, c => {
        Ok(tasks::table
            .filter(tasks::queue.eq(queue))
            .filter(tasks::dedupe_key.eq(key))
            .filter(tasks::state.eq_any(active))
            .select(TaskRow::as_select())
            .first(c)
            .optional()?)
    })
}

/// Inserts a task, or returns the unfinished task of the same queue with
/// the same dedupe key and `true`. The partial unique index on
/// `(queue, dedupe_key)` settles a race between two enqueues.
pub fn enqueue(conn: &mut Conn, row: &NewTaskRow) -> Result<(TaskRow, bool), StorageError> {
    if let Some(key) = &row.dedupe_key
        && let Some(existing) = active_with_key(conn, &row.queue, key)?
    {
        return Ok((existing, true));
    }
    let inserted = audit::transaction(conn, |conn| {
        let task: TaskRow = with_conn!(conn, c => {
            diesel::insert_into(tasks::table)
                .values(row)
                .returning(TaskRow::as_returning())
                .get_result(c)?
        });
        audit::append(
            conn,
            Change::of("task.enqueue", "task", task.id, None, Some(&task)),
        )?;
        Ok(task)
    });
    match (inserted, &row.dedupe_key) {
        (Ok(task), _) => Ok((task, false)),
        (
            Err(StorageError::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))),
            Some(key),
        ) => active_with_key(conn, &row.queue, key)?
            .map(|existing| (existing, true))
            .ok_or_else(|| {
                StorageError::Task("dedupe conflict without an active task".to_string())
            }),
        (Err(error), _) => Err(error),
    }
}

const SQLITE_CLAIM: &str = "UPDATE tasks SET state = 2, worker = ?, lease_token = ?, \
     lease_expires_at = ?, attempts = attempts + 1, revision = revision + 1, updated_at = ?, \
     leased_at = ? \
     WHERE id IN (SELECT id FROM tasks WHERE queue = ? AND state = 1 AND run_at <= ? \
     ORDER BY priority DESC, id LIMIT ?) RETURNING *";

const POSTGRES_CLAIM: &str = "UPDATE tasks SET state = 2, worker = $1, lease_token = $2, \
     lease_expires_at = $3, attempts = attempts + 1, revision = revision + 1, updated_at = $4, \
     leased_at = $5 WHERE id IN (SELECT id FROM tasks WHERE queue = $6 AND state = 1 \
     AND run_at <= $7 ORDER BY priority DESC, id LIMIT $8 FOR UPDATE SKIP LOCKED) RETURNING *";

/// Puts tasks whose lease expired back in the queue, or moves them to DEAD
/// when the expired claim was their last attempt.
fn release_expired(conn: &mut Conn, queue: &str, now: i64) -> Result<(), StorageError> {
    let expired = tasks::table
        .filter(tasks::queue.eq(queue))
        .filter(tasks::state.eq(TaskState::Leased as i32))
        .filter(tasks::lease_expires_at.le(now));
    let released: Vec<TaskRow> = with_conn!(conn, c => {
        let mut released: Vec<TaskRow> = diesel::update(expired.filter(tasks::attempts.ge(tasks::max_attempts)))
            .set((
                tasks::state.eq(TaskState::Dead as i32),
                tasks::last_error.eq("the lease expired on the last attempt"),
                tasks::lease_token.eq(""),
                tasks::finished_at.eq(now),
                tasks::revision.eq(tasks::revision + 1),
                tasks::updated_at.eq(now),
            ))
            .returning(TaskRow::as_returning())
            .get_results(c)?;
        let queued: Vec<TaskRow> = diesel::update(expired)
            .set((
                tasks::state.eq(TaskState::Queued as i32),
                tasks::last_error.eq("the lease expired"),
                tasks::lease_token.eq(""),
                tasks::run_at.eq(now),
                tasks::revision.eq(tasks::revision + 1),
                tasks::updated_at.eq(now),
            ))
            .returning(TaskRow::as_returning())
            .get_results(c)?;
        released.extend(queued);
        released
    });
    for task in &released {
        audit::append(
            conn,
            Change::of("task.lease_expired", "task", task.id, None, Some(task)),
        )?;
    }
    Ok(())
}

/// Leases up to `claim.max_tasks` ready tasks to one worker; returns them
/// highest priority first, then oldest.
pub fn claim(conn: &mut Conn, claim: &Claim) -> Result<Vec<TaskRow>, StorageError> {
    audit::transaction(conn, |conn| {
        release_expired(conn, &claim.queue, claim.now)?;
        macro_rules! run_claim {
            ($c:expr, $sql:expr) => {
                diesel::sql_query($sql)
                    .bind::<Text, _>(&claim.worker)
                    .bind::<Text, _>(&claim.lease_token)
                    .bind::<BigInt, _>(claim.lease_expires_at)
                    .bind::<BigInt, _>(claim.now)
                    .bind::<BigInt, _>(claim.now)
                    .bind::<Text, _>(&claim.queue)
                    .bind::<BigInt, _>(claim.now)
                    .bind::<BigInt, _>(claim.max_tasks)
                    .load::<TaskRow>($c)?
            };
        }
        let mut claimed = match conn {
            Conn::Sqlite(c) => run_claim!(&mut **c, SQLITE_CLAIM),
            Conn::Postgres(c) => run_claim!(&mut **c, POSTGRES_CLAIM),
        };
        claimed.sort_by_key(|task| (std::cmp::Reverse(task.priority), task.id));
        for task in &claimed {
            audit::append(
                conn,
                Change::of("task.claim", "task", task.id, None, Some(task)),
            )?;
        }
        Ok(claimed)
    })
}

/// Explains why a lease token does not match: the task is gone or the
/// token is stale.
fn stale_lease(conn: &mut Conn, id: i64) -> StorageError {
    match get(conn, id) {
        Ok(task) => StorageError::FailedPrecondition(format!(
            "the lease token of task {id} is not the current one: the task is {} (worker {:?}, \
             attempt {}); claim it again",
            state_name(task.state),
            task.worker,
            task.attempts
        )),
        Err(error) => error,
    }
}

/// Extends the lease of a claimed task, with an audit event.
pub fn heartbeat(
    conn: &mut Conn,
    id: i64,
    lease_token: &str,
    now: i64,
    lease_expires_at: i64,
) -> Result<TaskRow, StorageError> {
    audit::transaction(conn, |conn| {
        let updated: Option<TaskRow> = with_conn!(conn, c => {
            diesel::update(
                tasks::table
                    .find(id)
                    .filter(tasks::state.eq(TaskState::Leased as i32))
                    .filter(tasks::lease_token.eq(lease_token)),
            )
            .set((
                tasks::lease_expires_at.eq(lease_expires_at),
                tasks::revision.eq(tasks::revision + 1),
                tasks::updated_at.eq(now),
            ))
            .returning(TaskRow::as_returning())
            .get_result(c)
            .optional()?
        });
        let task = updated.ok_or_else(|| stale_lease(conn, id))?;
        audit::append(
            conn,
            Change::of("task.heartbeat", "task", id, None, Some(&task)),
        )?;
        Ok(task)
    })
}

/// Ends the current lease of a task if `lease_token` matches it, setting
/// the state and error; fails with a stale-lease error otherwise.
fn finish_lease(
    conn: &mut Conn,
    id: i64,
    lease_token: &str,
    state: TaskState,
    now: i64,
) -> Result<TaskRow, StorageError> {
    let finished = (state != TaskState::Queued).then_some(now);
    let updated: Option<TaskRow> = with_conn!(conn, c => {
        diesel::update(
            tasks::table
                .find(id)
                .filter(tasks::state.eq(TaskState::Leased as i32))
                .filter(tasks::lease_token.eq(lease_token)),
        )
        .set((
            tasks::state.eq(state as i32),
            tasks::lease_token.eq(""),
            tasks::lease_expires_at.eq(None::<i64>),
            tasks::finished_at.eq(finished),
            tasks::revision.eq(tasks::revision + 1),
            tasks::updated_at.eq(now),
        ))
        .returning(TaskRow::as_returning())
        .get_result(c)
        .optional()?
    });
    updated.ok_or_else(|| stale_lease(conn, id))
}

/// Completes a claimed task and stores what it produced, all in one
/// transaction: a crash leaves either both or neither.
pub fn complete(
    conn: &mut Conn,
    id: i64,
    lease_token: &str,
    result: Option<RunImport>,
    now: i64,
) -> Result<(TaskRow, Option<i64>), StorageError> {
    audit::transaction(conn, |conn| {
        let mut task = finish_lease(conn, id, lease_token, TaskState::Succeeded, now)?;
        let Some(mut run) = result else {
            audit::append(
                conn,
                Change::of("task.complete", "task", id, None, Some(&task)),
            )?;
            return Ok((task, None));
        };
        // The run began when the worker's lease did.
        run.crew_output.started_at = run.crew_output.started_at.or(task.leased_at);
        let crew_output_id = imports::import_runs(conn, vec![run])?[0].crew_output_id;
        task = with_conn!(conn, c => {
            diesel::update(tasks::table.find(id))
                .set(tasks::crew_output_id.eq(crew_output_id))
                .returning(TaskRow::as_returning())
                .get_result(c)?
        });
        audit::append(
            conn,
            Change::of("task.complete", "task", id, None, Some(&task)),
        )?;
        Ok((task, Some(crew_output_id)))
    })
}

/// Records a failed attempt: queues the task again after its backoff, or
/// moves it to DEAD when `permanent` or when no attempts are left.
pub fn fail(
    conn: &mut Conn,
    id: i64,
    lease_token: &str,
    error: &str,
    permanent: bool,
    now: i64,
) -> Result<TaskRow, StorageError> {
    audit::transaction(conn, |conn| {
        let current = get(conn, id)?;
        let dead = permanent || current.attempts >= current.max_attempts;
        let state = if dead {
            TaskState::Dead
        } else {
            TaskState::Queued
        };
        finish_lease(conn, id, lease_token, state, now)?;
        let run_at = if dead {
            current.run_at
        } else {
            now + backoff_ms(current.retry_backoff_ms, current.attempts) * 1_000
        };
        let failed: TaskRow = with_conn!(conn, c => {
            diesel::update(tasks::table.find(id))
                .set((tasks::last_error.eq(error), tasks::run_at.eq(run_at)))
                .returning(TaskRow::as_returning())
                .get_result(c)?
        });
        audit::append(
            conn,
            Change::of("task.fail", "task", id, Some(&current), Some(&failed)),
        )?;
        Ok(failed)
    })
}

macro_rules! filtered {
    ($filter:expr) => {{
        let filter = $filter;
        let mut query = tasks::table.into_boxed();
        if let Some(queue) = &filter.queue {
            query = query.filter(tasks::queue.eq(queue));
        }
        if let Some(state) = filter.state {
            query = query.filter(tasks::state.eq(state));
        }
        if let Some(worker) = &filter.worker {
            query = query.filter(tasks::worker.eq(worker));
        }
        query
    }};
}

/// Lists tasks in the order they were enqueued (by id).
pub fn list(
    conn: &mut Conn,
    filter: &TaskFilter,
    page: PageRequest,
) -> Result<Page<TaskRow>, StorageError> {
    with_conn!(conn, c => {
        let total = total_or_count(page.counted, || {
            count_bounded(filtered!(filter).select(tasks::id)).get_result(c)
        })?;
        let mut query = filtered!(filter);
        if let Some(after) = page.after {
            query = query.filter(tasks::id.gt(after.id));
        }
        let rows = query
            .order(tasks::id.asc())
            .limit(page.size + 1)
            .select(TaskRow::as_select())
            .load(c)?;
        Ok(Page::from_rows(rows, page, total, |row: &TaskRow| Cursor {
            key: row.id,
            id: row.id,
        }))
    })
}

/// Moves a task from one of `from` to `to` by an operator, or explains why
/// it cannot move.
fn operator_move(
    conn: &mut Conn,
    id: i64,
    from: &[TaskState],
    to: TaskState,
    now: i64,
) -> Result<TaskRow, StorageError> {
    let action = if to == TaskState::Queued {
        "task.retry"
    } else {
        "task.cancel"
    };
    audit::transaction(conn, |conn| {
        let before = get(conn, id)?;
        let moved = move_state(conn, id, from, to, now)?;
        audit::append(
            conn,
            Change::of(action, "task", id, Some(&before), Some(&moved)),
        )?;
        Ok(moved)
    })
}

fn move_state(
    conn: &mut Conn,
    id: i64,
    from: &[TaskState],
    to: TaskState,
    now: i64,
) -> Result<TaskRow, StorageError> {
    let from: Vec<i32> = from.iter().map(|state| *state as i32).collect();
    let queued = to == TaskState::Queued;
    let updated = with_conn!(conn, c => {
        let target = tasks::table.find(id).filter(tasks::state.eq_any(&from));
        let result = if queued {
            diesel::update(target)
                .set((
                    tasks::state.eq(to as i32),
                    tasks::attempts.eq(0),
                    tasks::run_at.eq(now),
                    tasks::finished_at.eq(None::<i64>),
                    tasks::revision.eq(tasks::revision + 1),
                    tasks::updated_at.eq(now),
                ))
                .returning(TaskRow::as_returning())
                .get_result(c)
        } else {
            diesel::update(target)
                .set((
                    tasks::state.eq(to as i32),
                    tasks::lease_token.eq(""),
                    tasks::lease_expires_at.eq(None::<i64>),
                    tasks::finished_at.eq(now),
                    tasks::revision.eq(tasks::revision + 1),
                    tasks::updated_at.eq(now),
                ))
                .returning(TaskRow::as_returning())
                .get_result(c)
        };
        match result {
            Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
                return Err(StorageError::FailedPrecondition(format!(
                    "task {id} cannot be queued again: an unfinished task of its queue has the same dedupe key"
                )));
            }
            other => other.optional()?,
        }
    });
    match updated {
        Some(task) => Ok(task),
        None => {
            let task = get(conn, id)?;
            Err(StorageError::FailedPrecondition(format!(
                "task {id} is {} and cannot move to {}",
                state_name(task.state),
                to.as_str_name()
            )))
        }
    }
}

/// Queues a DEAD or CANCELLED task again with its attempts reset.
pub fn retry(conn: &mut Conn, id: i64, now: i64) -> Result<TaskRow, StorageError> {
    operator_move(
        conn,
        id,
        &[TaskState::Dead, TaskState::Cancelled],
        TaskState::Queued,
        now,
    )
}

/// Cancels a QUEUED or LEASED task.
pub fn cancel(conn: &mut Conn, id: i64, now: i64) -> Result<TaskRow, StorageError> {
    operator_move(
        conn,
        id,
        &[TaskState::Queued, TaskState::Leased],
        TaskState::Cancelled,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1_000, 1), 1_000);
        assert_eq!(backoff_ms(1_000, 2), 2_000);
        assert_eq!(backoff_ms(1_000, 4), 8_000);
        assert_eq!(backoff_ms(1_000, 100), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(10, 0), 10);
    }
}
