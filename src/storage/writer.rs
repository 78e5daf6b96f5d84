//! The SQLite writer: one thread that owns the write side of the database
//! and commits the writes waiting in its queue together, on a connection
//! that no read uses.
//!
//! SQLite runs one write transaction at a time, and with
//! `synchronous=FULL` each commit waits for the disk. The writer takes every
//! write queued when it becomes free, runs each in a savepoint of one
//! transaction, and commits once: a write that fails rolls back its own
//! savepoint only, and every caller receives its result after the commit,
//! so a write reported as stored is on disk. Under load many writes share
//! one disk flush (group commit). A write that is alone in its transaction
//! runs without savepoints, and a failure rolls back the transaction.
//!
//! A second thread checkpoints the write-ahead log after each commit,
//! copying the committed pages into the database file on a connection of
//! its own. The checkpoint is passive: it blocks neither the writer nor a
//! reader. Left to SQLite, the commit that grows the log past 1,000 pages
//! runs the checkpoint itself, and every write of that group waits for it
//! (at a million findings, one call in ten took 20 ms instead of 6). When
//! a checkpoint has copied the whole log before the next write begins,
//! that write starts the log over, so the log stays small.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use tokio::sync::{mpsc, oneshot};

use super::{Conn, SqlitePool, Storage, StorageError, transaction, with_conn, without_savepoints};

/// Writes committed together at most, so one commit's latency stays small.
const MAX_WRITES_PER_COMMIT: usize = 64;

/// Writes waiting at most; further callers wait for a place, bounded by the
/// pool timeout.
const QUEUE_CAPACITY: usize = 1_024;

/// Delivers a write's result once its transaction has committed (`None`)
/// or failed to commit (`Some` with the reason).
type Finish = Box<dyn FnOnce(Option<String>) + Send>;

/// Instruction for one write: run it, or reject it with an error without
/// running it. A write `alone` in its transaction runs without savepoints,
/// and the writer rolls the transaction back when it fails.
enum Run<'a> {
    Execute { conn: &'a mut Conn, alone: bool },
    Reject(StorageError),
}

/// A write that ran: how to deliver its result, and whether it failed.
struct Ran {
    finish: Finish,
    failed: bool,
}

/// A write: runs and returns how to deliver its result, or delivers a
/// rejection at once.
type Job = Box<dyn FnOnce(Run<'_>) -> Option<Ran> + Send>;

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    queue_timeout: Duration,
}

impl Writer {
    /// Starts the writer thread on the one connection of `pool`, and the
    /// checkpoint thread on a connection that it opens on `storage`.
    pub fn start(storage: Storage, pool: SqlitePool, queue_timeout: Duration) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (committed, commits) = std_mpsc::sync_channel(1);
        let checkpoint_storage = storage.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_string())
            .spawn(move || checkpoint_after_commits(&checkpoint_storage, &commits))
            .expect("cannot start the SQLite checkpoint thread");
        std::thread::Builder::new()
            .name("sqlite-writer".to_string())
            .spawn(move || run(&pool, queue_timeout, queue, committed))
            .expect("cannot start the SQLite writer thread");
        Writer {
            jobs,
            queue_timeout,
        }
    }

    /// Runs `work` in the next group commit and returns its result after
    /// the commit.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Conn) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |run: Run<'_>| {
            let (conn, alone) = match run {
                Run::Execute { conn, alone } => (conn, alone),
                Run::Reject(error) => {
                    let _ = done.send(Err(error));
                    return None;
                }
            };
            let _entered = span.enter();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                if alone {
                    without_savepoints(|| work(conn))
                } else {
                    transaction(conn, work)
                }
            }))
            .unwrap_or_else(|_| Err(StorageError::Task("a write panicked".to_string())));
            let failed = outcome.is_err();
            let finish = Box::new(move |commit_error: Option<String>| {
                let outcome = match (outcome, commit_error) {
                    (Ok(_), Some(reason)) => Err(StorageError::Task(reason)),
                    (outcome, _) => outcome,
                };
                let _ = done.send(outcome);
            }) as Finish;
            Some(Ran { finish, failed })
        });
        tokio::time::timeout(self.queue_timeout, self.jobs.send(job))
            .await
            .map_err(|_| StorageError::PoolTimeout(self.queue_timeout))?
            .map_err(|_| StorageError::Task("the SQLite writer stopped".to_string()))?;
        result
            .await
            .map_err(|_| StorageError::Task("the SQLite writer dropped a write".to_string()))?
    }
}

/// Runs the writer thread: waits for a write, takes the others already
/// queued, and runs them in one transaction.
fn run(
    pool: &SqlitePool,
    timeout: Duration,
    mut queue: mpsc::Receiver<Job>,
    committed: std_mpsc::SyncSender<()>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_WRITES_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_together(pool, timeout, jobs);
        // A signal still waiting covers this commit too.
        let _ = committed.try_send(());
    }
    tracing::debug!("SQLite writer stopped");
}

/// Checkpoints after commits until the writer stops. A checkpoint that
/// cannot copy every page (a reader still reads an older snapshot) copies
/// what it can, and the next one the rest.
fn checkpoint_after_commits(storage: &Storage, commits: &std_mpsc::Receiver<()>) {
    let mut conn = None;
    while commits.recv().is_ok() {
        if conn.is_none() {
            match storage.open_sqlite_connection() {
                Ok(opened) => conn = Some(opened),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot open the checkpoint connection");
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(error) = c.batch_execute("PRAGMA wal_checkpoint(PASSIVE);")
        {
            tracing::warn!(error = %error, "checkpoint of the SQLite log failed");
            conn = None;
        }
    }
    tracing::debug!("SQLite checkpointer stopped");
}

fn commit_together(pool: &SqlitePool, timeout: Duration, jobs: Vec<Job>) {
    let mut conn = match pool.get() {
        Ok(conn) => Conn::Sqlite(conn),
        Err(error) => {
            tracing::warn!(
                error = %error,
                writes = jobs.len(),
                "opening the SQLite writer's connection failed; its writes get UNAVAILABLE"
            );
            for job in jobs {
                job(Run::Reject(StorageError::PoolTimeout(timeout)));
            }
            return;
        }
    };
    let begun = match &mut conn {
        Conn::Sqlite(c) => {
            AnsiTransactionManager::begin_transaction_sql(&mut **c, "BEGIN IMMEDIATE")
        }
        Conn::Postgres(c) => AnsiTransactionManager::begin_transaction(&mut **c),
    };
    if let Err(error) = begun {
        // Another process holds the write lock past the busy timeout; each
        // write reports it as it would report its own statement failing.
        tracing::warn!(error = %error, writes = jobs.len(), "cannot begin a write transaction");
        let error = StorageError::Database(error);
        for job in jobs {
            job(Run::Reject(duplicate(&error)));
        }
        return;
    }

    // A write alone runs without savepoints (see `without_savepoints`), so
    // when it fails the whole transaction rolls back. Writes that share the
    // transaction each run in a savepoint, so that one failing rolls back
    // its own changes only.
    let alone = jobs.len() == 1;
    let ran: Vec<Ran> = jobs
        .into_iter()
        .filter_map(|job| {
            job(Run::Execute {
                conn: &mut conn,
                alone,
            })
        })
        .collect();
    if alone && ran.iter().any(|ran| ran.failed) {
        if let Err(error) =
            with_conn!(&mut conn, c => AnsiTransactionManager::rollback_transaction(c))
        {
            tracing::error!(error = %error, "rollback of a failed write failed");
        }
        for ran in ran {
            (ran.finish)(None);
        }
        return;
    }
    let finishes: Vec<Finish> = ran.into_iter().map(|ran| ran.finish).collect();
    let committed = with_conn!(&mut conn, c => AnsiTransactionManager::commit_transaction(c));
    let commit_error = committed.err().map(|error| {
        tracing::error!(error = %error, writes = finishes.len(), "group commit failed");
        let _ = with_conn!(&mut conn, c => AnsiTransactionManager::rollback_transaction(c));
        format!("commit failed: {error}")
    });
    for finish in finishes {
        finish(commit_error.clone());
    }
}

/// Copies an error for each write of a failed batch, keeping what decides
/// its gRPC status: a pool timeout stays one, and a database error keeps
/// its message (SQLite reports a busy database only there).
fn duplicate(error: &StorageError) -> StorageError {
    match error {
        StorageError::PoolTimeout(waited) => StorageError::PoolTimeout(*waited),
        StorageError::Database(diesel::result::Error::DatabaseError(kind, info)) => {
            StorageError::Database(diesel::result::Error::DatabaseError(
                *kind,
                Box::new(info.message().to_string()),
            ))
        }
        other => StorageError::Task(other.to_string()),
    }
}
