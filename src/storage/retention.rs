//! Retention: deletes log entries and crew outputs older than the
//! configured ages, in small transactions, from a background task that
//! `server::serve` starts.
//!
//! A pass first deletes log entries whose `timestamp` is before the log
//! cutoff, then crew outputs created before the run cutoff, each with its
//! findings, fixes, fix links and log entries. Two kinds of expired runs
//! stay:
//!
//! - runs marked `keep`;
//! - runs that hold a finding still in effect for later runs of the crew:
//!   a finding whose status is OPEN, CONFIRMED or REOPENED and whose id is
//!   the `finding_id` of a `finding_triage` row with one of those statuses.
//!   That row is where later findings with the same fingerprint start from,
//!   so the finding it names is the record of a decision later runs carry
//!   forward. Triage rows that are FIXED or DISMISSED protect nothing, and
//!   retention never deletes `finding_triage` rows, so a dismissal keeps
//!   applying to later runs after the run where it was made is gone.
//!
//! Every transaction deletes at most `batch_size` rows of log entries,
//! findings and fixes (plus the fix links that cascade with them), so on
//! SQLite other writes run between batches. A run with more records than
//! that loses them over several transactions, and its own row goes last.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::audit::{self, Change};
use super::models::CrewOutputRow;
use super::schema::{
    code_analysis_results as findings, crew_outputs, error_handling_results as fixes,
    finding_triage, log_entries,
};
use super::{Conn, Storage, StorageError, now_micros, transaction, with_conn};
use crate::pb::FindingStatus;

/// Finding and triage statuses of a problem that is still open.
const UNRESOLVED: [i32; 3] = [
    FindingStatus::Open as i32,
    FindingStatus::Confirmed as i32,
    FindingStatus::Reopened as i32,
];

/// Ages past which a pass deletes records. `None` keeps records of that
/// kind forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Age, by `timestamp`, past which log entries are deleted.
    pub log_max_age: Option<Duration>,
    /// Age, by `created_at`, past which crew outputs are deleted with their
    /// records.
    pub run_max_age: Option<Duration>,
    /// Rows deleted per transaction at most.
    pub batch_size: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            log_max_age: None,
            run_max_age: None,
            batch_size: 1_000,
        }
    }
}

impl RetentionPolicy {
    /// Returns whether the policy deletes anything.
    pub fn is_enabled(&self) -> bool {
        self.log_max_age.is_some() || self.run_max_age.is_some()
    }
}

/// Settings of the background retention task.
#[derive(Debug, Clone)]
pub struct RetentionOptions {
    pub policy: RetentionPolicy,
    /// Time from the end of one pass to the start of the next.
    pub interval: Duration,
    /// Time from server start to the first pass, so start-up does not
    /// compete with a long first pass.
    pub first_pass_delay: Duration,
    /// Counters that every pass adds to; clones of the options share them.
    pub stats: Arc<RetentionStats>,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        RetentionOptions {
            policy: RetentionPolicy::default(),
            interval: Duration::from_secs(3_600),
            first_pass_delay: Duration::from_secs(10),
            stats: Arc::new(RetentionStats::default()),
        }
    }
}

/// Running totals of the retention task since the server started, for
/// metrics exporters.
#[derive(Debug, Default)]
pub struct RetentionStats {
    passes: AtomicU64,
    failed_passes: AtomicU64,
    log_entries_deleted: AtomicU64,
    crew_outputs_deleted: AtomicU64,
    findings_deleted: AtomicU64,
    fixes_deleted: AtomicU64,
}

/// A copy of the counters of `RetentionStats` at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionCounts {
    /// Passes finished, failed ones included.
    pub passes: u64,
    pub failed_passes: u64,
    /// Log entries deleted by age or with their crew output.
    pub log_entries_deleted: u64,
    pub crew_outputs_deleted: u64,
    pub findings_deleted: u64,
    pub fixes_deleted: u64,
}

impl RetentionStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> RetentionCounts {
        RetentionCounts {
            passes: self.passes.load(Ordering::Relaxed),
            failed_passes: self.failed_passes.load(Ordering::Relaxed),
            log_entries_deleted: self.log_entries_deleted.load(Ordering::Relaxed),
            crew_outputs_deleted: self.crew_outputs_deleted.load(Ordering::Relaxed),
            findings_deleted: self.findings_deleted.load(Ordering::Relaxed),
            fixes_deleted: self.fixes_deleted.load(Ordering::Relaxed),
        }
    }

    /// Adds a finished pass and what it deleted, also when it failed part-way.
    fn record(&self, outcome: &PassOutcome, failed: bool) {
        self.log_entries_deleted
            .fetch_add(outcome.log_entries_deleted, Ordering::Relaxed);
        self.crew_outputs_deleted
            .fetch_add(outcome.crew_outputs_deleted, Ordering::Relaxed);
        self.findings_deleted
            .fetch_add(outcome.findings_deleted, Ordering::Relaxed);
        self.fixes_deleted
            .fetch_add(outcome.fixes_deleted, Ordering::Relaxed);
        if failed {
            self.failed_passes.fetch_add(1, Ordering::Relaxed);
        }
        self.passes.fetch_add(1, Ordering::Relaxed);

        let metrics = &crate::metrics::METRICS;
        for (counter, deleted) in [
            (
                &metrics.retention_log_entries_deleted,
                outcome.log_entries_deleted,
            ),
            (
                &metrics.retention_crew_outputs_deleted,
                outcome.crew_outputs_deleted,
            ),
            (
                &metrics.retention_findings_deleted,
                outcome.findings_deleted,
            ),
            (&metrics.retention_fixes_deleted, outcome.fixes_deleted),
        ] {
            counter.fetch_add(deleted, Ordering::Relaxed);
        }
        if failed {
            metrics
                .retention_failed_passes
                .fetch_add(1, Ordering::Relaxed);
        }
        metrics.retention_passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts of the records one pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Log entries deleted by age or with their crew output.
    pub log_entries_deleted: u64,
    pub crew_outputs_deleted: u64,
    pub findings_deleted: u64,
    pub fixes_deleted: u64,
    /// Crew outputs older than the run cutoff that the pass left in place:
    /// marked keep, holding a finding in effect, or locked by another
    /// replica's pass.
    pub expired_runs_kept: u64,
}

/// Counts of the records one transaction of expired runs deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunBatch {
    /// Expired runs the batch found; 0 means none are left to delete.
    pub candidates: usize,
    pub crew_outputs: u64,
    pub findings: u64,
    pub fixes: u64,
    pub log_entries: u64,
}

/// Deletes up to `limit` log entries with a timestamp before `cutoff`,
/// oldest first, in one transaction, and returns how many it deleted. On
/// PostgreSQL, entries locked by another replica's pass are skipped.
pub fn delete_log_entries_before(
    conn: &mut Conn,
    cutoff: i64,
    limit: i64,
) -> Result<u64, StorageError> {
    transaction(conn, |conn| {
        let expired = log_entries::table
            .filter(log_entries::timestamp.lt(cutoff))
            .order((log_entries::timestamp.asc(), log_entries::id.asc()))
            .limit(limit)
            .select(log_entries::id);
        let ids: Vec<i64> = match conn {
            Conn::Sqlite(c) => expired.load(&mut **c)?,
            Conn::Postgres(c) => expired.for_update().skip_locked().load(&mut **c)?,
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let deleted = with_conn!(conn, c => {
            diesel::delete(log_entries::table.filter(log_entries::id.eq_any(&ids))).execute(c)?
        });
        Ok(deleted as u64)
    })
}

/// Returns the ids of up to `limit` crew outputs created before `cutoff`
/// that retention may delete, oldest first (see the module documentation).
/// On PostgreSQL the rows stay locked until the transaction ends, and rows
/// locked by another replica's pass are skipped.
fn expired_runs(conn: &mut Conn, cutoff: i64, limit: i64) -> Result<Vec<i64>, StorageError> {
    let decisions = finding_triage::table
        .filter(finding_triage::status.eq_any(UNRESOLVED))
        .select(finding_triage::finding_id);
    let protected_runs = findings::table
        .filter(findings::id.eq_any(decisions))
        .filter(findings::status.eq_any(UNRESOLVED))
        .select(findings::crew_output_id);
    let expired = crew_outputs::table
        .filter(crew_outputs::created_at.lt(cutoff))
        .filter(crew_outputs::keep.eq(0))
        .filter(crew_outputs::id.ne_all(protected_runs))
        .order(crew_outputs::id.asc())
        .limit(limit)
        .select(crew_outputs::id);
    Ok(match conn {
        Conn::Sqlite(c) => expired.load(&mut **c)?,
        Conn::Postgres(c) => expired.for_update().skip_locked().load(&mut **c)?,
    })
}

/// Deletes up to `limit` rows of a table with a `crew_output_id` column
/// that belong to run `run`, lowest ids first, and evaluates to how many
/// it deleted.
macro_rules! delete_records_of_run {
    ($conn:expr, $table:ident, $run:expr, $limit:expr) => {{
        let deleted = with_conn!($conn, c => {
            let ids: Vec<i64> = $table::table
                .filter($table::crew_output_id.eq($run))
                .order($table::id.asc())
                .limit($limit)
                .select($table::id)
                .load(c)?;
            if ids.is_empty() {
                0
            } else {
                diesel::delete($table::table.filter($table::id.eq_any(&ids))).execute(c)?
            }
        });
        deleted as i64
    }};
}

/// Deletes, in one transaction, expired runs oldest first with their
/// records, at most `budget` rows of log entries, findings and fixes in all.
/// A run whose records exceed what is left of the budget keeps its row and
/// the rest of its records until the next batch. Each deleted run gets an
/// audit event `crew_output.expire`.
pub fn delete_expired_runs(
    conn: &mut Conn,
    cutoff: i64,
    budget: i64,
) -> Result<RunBatch, StorageError> {
    audit::transaction(conn, |conn| {
        let candidates = expired_runs(conn, cutoff, budget)?;
        let mut batch = RunBatch {
            candidates: candidates.len(),
            ..RunBatch::default()
        };
        let mut remaining = budget;
        for run in candidates {
            let deleted = delete_records_of_run!(conn, log_entries, run, remaining);
            batch.log_entries += deleted as u64;
            remaining -= deleted;
            if remaining <= 0 {
                break;
            }
            let deleted = delete_records_of_run!(conn, fixes, run, remaining);
            batch.fixes += deleted as u64;
            remaining -= deleted;
            if remaining <= 0 {
                break;
            }
            let deleted = delete_records_of_run!(conn, findings, run, remaining);
            batch.findings += deleted as u64;
            remaining -= deleted;
            if remaining <= 0 {
                break;
            }

            // Records added since the deletes above go with the row, through
            // the cascading foreign keys.
            let row: Option<CrewOutputRow> = with_conn!(conn, c => {
                diesel::delete(crew_outputs::table.find(run).filter(crew_outputs::keep.eq(0)))
                    .returning(CrewOutputRow::as_returning())
                    .get_result(c)
                    .optional()?
            });
            if let Some(row) = row {
                audit::append(
                    conn,
                    Change::of("crew_output.expire", "crew_output", run, Some(&row), None),
                )?;
                batch.crew_outputs += 1;
            }
            remaining -= 1;
            if remaining <= 0 {
                break;
            }
        }
        Ok(batch)
    })
}

/// Counts the crew outputs created before `cutoff`.
pub fn count_runs_before(conn: &mut Conn, cutoff: i64) -> Result<i64, StorageError> {
    with_conn!(conn, c => {
        Ok(crew_outputs::table
            .filter(crew_outputs::created_at.lt(cutoff))
            .count()
            .get_result(c)?)
    })
}

/// Converts an age to the cutoff time in UTC microseconds: records older
/// than the cutoff are expired.
fn cutoff(max_age: Duration) -> i64 {
    let age = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
    now_micros().saturating_sub(age)
}

/// Returns whether the task must stop: a stop was sent or the handle was
/// dropped.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Actor of the audit events that retention writes.
pub const ACTOR: &str = "retention";

/// Runs one pass of `policy` now, to its end, and returns what it deleted.
pub async fn run_pass(
    storage: &Storage,
    policy: &RetentionPolicy,
) -> Result<PassOutcome, StorageError> {
    let (_keep_running, stop) = watch::channel(false);
    let mut outcome = PassOutcome::default();
    super::audit::acting_as(Arc::from(ACTOR), pass(storage, policy, &stop, &mut outcome)).await?;
    Ok(outcome)
}

/// Deletes expired records batch by batch, counting them in `outcome`,
/// until none are left or a stop is requested. A batch that started
/// always finishes.
async fn pass(
    storage: &Storage,
    policy: &RetentionPolicy,
    stop: &watch::Receiver<bool>,
    outcome: &mut PassOutcome,
) -> Result<(), StorageError> {
    let batch_size = policy.batch_size.max(1);
    if let Some(max_age) = policy.log_max_age {
        let cutoff = cutoff(max_age);
        while !stopped(stop) {
            let deleted = storage
                .run_write(move |conn| delete_log_entries_before(conn, cutoff, batch_size))
                .await?;
            outcome.log_entries_deleted += deleted;
            if deleted < batch_size as u64 {
                break;
            }
        }
    }
    if let Some(max_age) = policy.run_max_age {
        let cutoff = cutoff(max_age);
        while !stopped(stop) {
            let batch = storage
                .run_write(move |conn| delete_expired_runs(conn, cutoff, batch_size))
                .await?;
            outcome.crew_outputs_deleted += batch.crew_outputs;
            outcome.findings_deleted += batch.findings;
            outcome.fixes_deleted += batch.fixes;
            outcome.log_entries_deleted += batch.log_entries;
            if batch.candidates == 0 {
                break;
            }
        }
        let kept = storage
            .run(move |conn| count_runs_before(conn, cutoff))
            .await?;
        outcome.expired_runs_kept = kept as u64;
    }
    Ok(())
}

/// The background retention task of a server. Dropping the handle stops
/// the task after the batch in progress; `stop` also waits for that.
pub struct RetentionTask {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
}

impl RetentionTask {
    /// Starts the task on the current tokio runtime, unless the policy
    /// deletes nothing.
    pub fn start(storage: Storage, options: RetentionOptions) -> RetentionTask {
        let (stop, stopping) = watch::channel(false);
        if !options.policy.is_enabled() {
            return RetentionTask { stop, handle: None };
        }
        let days = |age: Option<Duration>| age.map_or(0, |age| age.as_secs() / 86_400);
        tracing::info!(
            retain_logs_days = days(options.policy.log_max_age),
            retain_runs_days = days(options.policy.run_max_age),
            interval_secs = options.interval.as_secs(),
            "retention on: first pass in {} s",
            options.first_pass_delay.as_secs()
        );
        // The audit events of retention name it as their actor.
        let task = super::audit::acting_as(Arc::from(ACTOR), run_task(storage, options, stopping));
        let handle = tokio::spawn(task);
        RetentionTask {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the task and waits until the batch in progress, if any, ends.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.handle.take()
            && let Err(error) = handle.await
        {
            tracing::error!(error = %error, "retention task failed");
        }
    }
}

/// Waits for the first pass, then runs passes with `options.interval`
/// between them until stopped.
async fn run_task(storage: Storage, options: RetentionOptions, mut stop: watch::Receiver<bool>) {
    let mut delay = options.first_pass_delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // A sent value or a dropped sender both mean stop.
            _ = stop.changed() => break,
        }
        let started = Instant::now();
        let mut outcome = PassOutcome::default();
        let result = pass(&storage, &options.policy, &stop, &mut outcome).await;
        options.stats.record(&outcome, result.is_err());

        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => tracing::info!(
                log_entries_deleted = outcome.log_entries_deleted,
                crew_outputs_deleted = outcome.crew_outputs_deleted,
                findings_deleted = outcome.findings_deleted,
                fixes_deleted = outcome.fixes_deleted,
                expired_runs_kept = outcome.expired_runs_kept,
                duration_ms,
                "retention pass deleted {} log entries and {} crew outputs in {duration_ms} ms",
                outcome.log_entries_deleted,
                outcome.crew_outputs_deleted
            ),
            Err(error) => tracing::error!(
                error = %error,
                log_entries_deleted = outcome.log_entries_deleted,
                crew_outputs_deleted = outcome.crew_outputs_deleted,
                findings_deleted = outcome.findings_deleted,
                fixes_deleted = outcome.fixes_deleted,
                duration_ms,
                "retention pass failed; the next pass in {} s retries",
                options.interval.as_secs()
            ),
        }
        if stopped(&stop) {
            break;
        }
        delay = options.interval;
    }
    tracing::debug!("retention task stopped");
}
