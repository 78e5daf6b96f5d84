//! The storage layer: the connection pool of either backend, the blocking
//! helper that runs Diesel off the async runtime, migrations and the
//! storage error. One file per table holds that table's queries.
//!
//! Both backends share one body of query code. `with_conn!` expands a block
//! once for `SqliteConnection` and once for `PgConnection`, so Diesel checks
//! every query against both backends and features such as `ON CONFLICT` and
//! `RETURNING` stay available, which Diesel's `MultiConnection` derive does
//! not offer. `transaction` wraps a closure over `Conn`, so storage
//! functions compose inside one transaction.

pub mod audit;
pub mod crew_outputs;
pub mod crews;
pub mod findings;
pub mod fixes;
pub mod history;
pub mod imports;
pub mod logs;
pub mod models;
pub mod paging;
pub mod reports;
pub mod retention;
pub mod schema;
pub mod state;
pub mod stats;
pub mod tasks;
mod writer;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use tokio::sync::Semaphore;
use tracing::Instrument;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Runs `$body` with `$c` bound to the concrete connection of either backend.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::storage::Conn::Sqlite($c) => {
                let $c: &mut diesel::sqlite::SqliteConnection = &mut *$c;
                $body
            }
            $crate::storage::Conn::Postgres($c) => {
                let $c: &mut diesel::pg::PgConnection = &mut *$c;
                $body
            }
        }
    };
}

/// Inserts `$rows` and evaluates to their new ids, in the order of the rows.
/// Both backends send multi-row statements: of `SQLITE_INSERT_ROWS` rows on
/// SQLite, where a statement per row would set up and journal every row
/// apart, and of `$chunk` rows on PostgreSQL, where a round trip per row
/// would dominate. Identity values of one statement follow the order of
/// its VALUES list, so the sorted ids pair with the rows in order.
macro_rules! insert_returning_ids {
    ($conn:expr, $table:expr, $id:expr, $rows:expr, $chunk:expr) => {{
        let rows = $rows;
        let conn: &mut $crate::storage::Conn = $conn;
        let rows_per_statement = match conn {
            $crate::storage::Conn::Sqlite(_) => $crate::storage::SQLITE_INSERT_ROWS,
            $crate::storage::Conn::Postgres(_) => $chunk,
        };
        let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(rows_per_statement) {
            let mut chunk_ids: Vec<i64> = $crate::storage::with_conn!(&mut *conn, c => {
                diesel::insert_into($table)
                    .values(chunk)
                    .returning($id)
                    .get_results(c)?
            });
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        ids
    }};
}

pub(crate) use insert_returning_ids;
pub(crate) use with_conn;

/// Failures of the storage layer. `api::status` maps each variant to a gRPC
/// status without a catch-all arm.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no database connection became free within {0:?}")]
    PoolTimeout(Duration),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

impl StorageError {
    pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
        StorageError::NotFound {
            resource,
            id: id.to_string(),
        }
    }
}

/// Database backend named by a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Splits a database URL into its backend and the string Diesel connects
/// with. `sqlite://PATH`, `sqlite:PATH` and a bare path select SQLite;
/// `postgres://` and `postgresql://` select PostgreSQL.
pub fn parse_database_url(url: &str) -> Result<(Backend, String), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_string()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(format!(
            "database URL {url:?} names no file; use sqlite://PATH or postgres://HOST/DB"
        ));
    }
    if path.contains("://") {
        return Err(format!(
            "database URL {url:?} has an unsupported scheme; use sqlite://PATH or postgres://HOST/DB"
        ));
    }
    Ok((Backend::Sqlite, path.to_string()))
}

/// Pool settings chosen by the operator.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once. On PostgreSQL, the sum over all
    /// replicas must stay below the server's `max_connections`.
    pub max_size: u32,
    /// Connections kept open while idle, so a burst after a quiet spell
    /// does not pay for new connections.
    pub min_idle: u32,
    /// How long a call waits for a free connection (and, on SQLite, for the
    /// write lock) before it fails with UNAVAILABLE.
    pub connection_timeout: Duration,
    /// PostgreSQL only: longest a statement may run before the server
    /// cancels it; zero means no limit.
    pub statement_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 8,
            min_idle: 1,
            connection_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Key of the PostgreSQL advisory lock held while migrating, so that of
/// several replicas starting at once one migrates and the others wait.
const MIGRATION_LOCK_KEY: i64 = 0x636f_6465_616e_6c7a;

/// Name under which the server's PostgreSQL sessions appear in
/// `pg_stat_activity`, unless the URL sets `application_name`.
const APPLICATION_NAME: &str = "code-analyzer";

/// Pages of write-ahead log (4 KiB each) at which a commit checkpoints by
/// itself: ten times SQLite's default, as a bound for when the
/// checkpointer thread falls behind.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Rows per multi-row INSERT on SQLite. Every row binds one parameter per
/// column, and SQLite accepts at most 32,766 parameters in one statement.
pub(crate) const SQLITE_INSERT_ROWS: usize = 500;

/// Page cache of the writer's connection, in KiB. SQLite keeps a
/// connection's cache between transactions only while no other connection
/// writes. The writer is the only connection that writes, so the index
/// pages its inserts touch stay cached from one commit to the next. Other
/// connections keep SQLite's default of 2 MiB.
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Sets the pragmas every SQLite connection needs: a busy timeout so writers
/// queue instead of failing (first, because switching to WAL takes a lock
/// that connections opened at the same time contend for), WAL so readers do
/// not block the writer, `synchronous=FULL` so an acknowledged write survives
/// a power loss, foreign keys for the cascading deletes, and case-sensitive
/// `LIKE` to match PostgreSQL. The writer's checkpointer thread checkpoints
/// the log after commits (see `writer`), so a commit checkpoints by itself
/// only when the log contains `WAL_AUTOCHECKPOINT_PAGES`.
#[derive(Debug)]
struct SqlitePragmas {
    busy_timeout: Duration,
    /// Whether this is the writer's connection, which gets a cache of
    /// `WRITER_CACHE_KIB` and temporary files in memory. A write that shares
    /// a commit runs in a savepoint, whose journal SQLite moves to a
    /// temporary file past 64 KiB. On disk, writing that file took a sixth
    /// of the writer thread's time in a profile of paced 100-finding writes.
    writer: bool,
}

impl SqlitePragmas {
    fn apply(&self, conn: &mut SqliteConnection) -> Result<(), diesel::result::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {};",
            self.busy_timeout.as_millis()
        ))?;
        // Switching to WAL needs a moment of exclusive access, and SQLite
        // reports a concurrent switch as busy without calling the busy
        // handler, so connections opened together retry here.
        let started = Instant::now();
        loop {
            match conn.batch_execute("PRAGMA journal_mode = WAL;") {
                Ok(()) => break,
                Err(error) if started.elapsed() < self.busy_timeout && is_locked(&error) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error),
            }
        }
        conn.batch_execute(&format!(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                 PRAGMA case_sensitive_like = ON; \
                 PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
        ))?;
        if self.writer {
            // A negative cache size counts KiB rather than pages.
            conn.batch_execute(&format!(
                "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
            ))?;
        }
        Ok(())
    }
}

fn is_locked(error: &diesel::result::Error) -> bool {
    let message = error.to_string();
    message.contains("database is locked") || message.contains("database table is locked")
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        self.apply(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Pool settings shared by both backends. Connections are checked when they
/// fail rather than on every checkout, which would cost a round trip per call.
fn pool_builder<M: diesel::r2d2::ManageConnection>(
    options: &PoolOptions,
) -> diesel::r2d2::Builder<M> {
    diesel::r2d2::Pool::builder()
        .max_size(options.max_size)
        .min_idle(Some(options.min_idle.min(options.max_size)))
        .connection_timeout(options.connection_timeout)
        .test_on_check_out(false)
}

/// Sets the session settings of every PostgreSQL connection.
#[derive(Debug)]
struct PostgresSettings {
    statement_timeout: Duration,
    set_application_name: bool,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PostgresSettings {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        let mut settings = format!(
            "SET statement_timeout = {};",
            self.statement_timeout.as_millis()
        );
        if self.set_application_name {
            settings.push_str(&format!(" SET application_name = '{APPLICATION_NAME}';"));
        }
        conn.batch_execute(&settings)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

type SqlitePool = diesel::r2d2::Pool<ConnectionManager<SqliteConnection>>;
type PgPool = diesel::r2d2::Pool<ConnectionManager<PgConnection>>;

/// A pooled connection of either backend.
pub enum Conn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Postgres(PooledConnection<ConnectionManager<PgConnection>>),
}

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Connection counts of the pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// The database behind the server: a pool of one backend. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    pool: Pool,
    /// On SQLite, the thread that runs writes with group commit.
    writer: Option<writer::Writer>,
    /// On PostgreSQL, permits for writes running at once: a quarter of the
    /// pool, so that reads still find a connection, and the database's
    /// CPU, while many writes queue.
    write_permits: Option<Arc<Semaphore>>,
    /// Connection target of Diesel: a file path or a PostgreSQL URL.
    target: String,
    connection_timeout: Duration,
}

impl Storage {
    /// Opens a pool on `database_url` and, on SQLite, starts the writer
    /// thread. The pool connects in the background, so this fails only on a
    /// malformed URL. `migrate` reports a database that cannot be reached.
    pub fn open(database_url: &str, options: &PoolOptions) -> Result<Storage, String> {
        let (backend, target) = parse_database_url(database_url)?;
        let pool = match backend {
            Backend::Sqlite => {
                let manager = ConnectionManager::<SqliteConnection>::new(target.clone());
                let pool = pool_builder(options)
                    .connection_customizer(Box::new(SqlitePragmas {
                        busy_timeout: options.connection_timeout,
                        writer: false,
                    }))
                    .build_unchecked(manager);
                Pool::Sqlite(pool)
            }
            Backend::Postgres => {
                let settings = PostgresSettings {
                    statement_timeout: options.statement_timeout,
                    set_application_name: !target.contains("application_name="),
                };
                let manager = ConnectionManager::<PgConnection>::new(target.clone());
                let pool = pool_builder(options)
                    .connection_customizer(Box::new(settings))
                    .build_unchecked(manager);
                Pool::Postgres(pool)
            }
        };
        let write_permits = (backend == Backend::Postgres)
            .then(|| Arc::new(Semaphore::new((options.max_size / 4).max(1) as usize)));
        let mut storage = Storage {
            writer: None,
            write_permits,
            pool,
            target,
            connection_timeout: options.connection_timeout,
        };
        if backend == Backend::Sqlite {
            // The writer's connection is in a pool of its own, so no read
            // takes it and its page cache stays valid.
            let write_pool = pool_builder(&PoolOptions {
                max_size: 1,
                min_idle: 1,
                ..options.clone()
            })
            .connection_customizer(Box::new(SqlitePragmas {
                busy_timeout: options.connection_timeout,
                writer: true,
            }))
            .build_unchecked(ConnectionManager::<SqliteConnection>::new(
                storage.target.clone(),
            ));
            storage.writer = Some(writer::Writer::start(
                storage.clone(),
                write_pool,
                options.connection_timeout,
            ));
        }
        Ok(storage)
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Takes a connection from the pool, waiting at most the connection timeout.
    pub fn get(&self) -> Result<Conn, StorageError> {
        let timeout = StorageError::PoolTimeout(self.connection_timeout);
        let started = Instant::now();
        let conn = match &self.pool {
            Pool::Sqlite(pool) => pool.get().map(Conn::Sqlite).map_err(|_| timeout),
            Pool::Postgres(pool) => pool.get().map(Conn::Postgres).map_err(|_| timeout),
        };
        let metrics = &crate::metrics::METRICS;
        metrics.pool_wait.observe(started.elapsed());
        if conn.is_err() {
            metrics
                .pool_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        conn
    }

    /// Open, idle and most connections of the pool.
    pub fn pool_state(&self) -> PoolState {
        let (state, max) = match &self.pool {
            Pool::Sqlite(pool) => (pool.state(), pool.max_size()),
            Pool::Postgres(pool) => (pool.state(), pool.max_size()),
        };
        PoolState {
            open: state.connections,
            idle: state.idle_connections,
            max,
        }
    }

    /// Applies the pending migrations and returns their versions.
    ///
    /// On PostgreSQL this runs on a connection of its own, outside the pool
    /// and its statement timeout, under an advisory lock: when several
    /// replicas start at once, one migrates while the others wait for the
    /// lock and then find nothing left to apply.
    pub fn migrate(&self) -> Result<Vec<String>, String> {
        let applied = match self.backend() {
            Backend::Sqlite => {
                // A connection of its own, so that a file that is not a
                // database fails here with SQLite's reason rather than as a
                // pool timeout.
                let mut conn = self.open_sqlite_connection()?;
                version_names(conn.run_pending_migrations(SQLITE_MIGRATIONS))?
            }
            Backend::Postgres => {
                let mut conn = PgConnection::establish(&self.target)
                    .map_err(|error| format!("cannot connect to the database: {error}"))?;
                let lock = |conn: &mut PgConnection, sql: &str| {
                    diesel::sql_query(sql)
                        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
                        .execute(conn)
                        .map_err(|error| format!("migration lock failed: {error}"))
                };
                lock(&mut conn, "SELECT pg_advisory_lock($1)")?;
                let applied = version_names(conn.run_pending_migrations(POSTGRES_MIGRATIONS));
                lock(&mut conn, "SELECT pg_advisory_unlock($1)")?;
                applied?
            }
        };
        Ok(applied)
    }

    /// Opens a SQLite connection outside the pool, with the pool's pragmas.
    fn open_sqlite_connection(&self) -> Result<SqliteConnection, String> {
        let mut conn = SqliteConnection::establish(&self.target)
            .map_err(|error| format!("cannot open the database {}: {error}", self.target))?;
        let pragmas = SqlitePragmas {
            busy_timeout: self.connection_timeout,
            writer: false,
        };
        pragmas
            .apply(&mut conn)
            .map_err(|error| format!("cannot open the database {}: {error}", self.target))?;
        Ok(conn)
    }

    /// Runs `work`, which only reads, with a pooled connection on a blocking
    /// thread, inside the caller's tracing span, so Diesel never blocks the
    /// async runtime.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Conn) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        self.run_blocking(work).await
    }

    /// Runs `work`, which writes, like `run`. On SQLite, the writer thread
    /// runs it in a savepoint of a transaction shared with the other writes
    /// waiting at that moment (see `writer`); a caller waits at most the
    /// pool timeout for a place in the queue. On PostgreSQL, at most a
    /// quarter of the pool runs writes at once, and a caller waits at most
    /// the pool timeout for its turn.
    pub async fn run_write<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Conn) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        if let Some(writer) = &self.writer {
            let caller = audit::current_caller();
            return writer
                .write(move |conn| audit::with_caller(caller, || work(conn)))
                .await;
        }
        // The permit lives until the blocking call has returned.
        let _permit = match &self.write_permits {
            Some(permits) => Some(
                tokio::time::timeout(self.connection_timeout, Arc::clone(permits).acquire_owned())
                    .await
                    .map_err(|_| StorageError::PoolTimeout(self.connection_timeout))?
                    .map_err(|_| StorageError::Task("write permits closed".to_string()))?,
            ),
            None => None,
        };
        self.run_blocking(work).await
    }

    async fn run_blocking<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Conn) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let storage = self.clone();
        let span = tracing::Span::current();
        let caller = audit::current_caller();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = storage.get()?;
            audit::with_caller(caller, || work(&mut conn))
        })
        .instrument(tracing::Span::current())
        .await
        .map_err(|error| StorageError::Task(error.to_string()))?
    }
}

fn version_names(
    applied: diesel::migration::Result<Vec<diesel::migration::MigrationVersion<'_>>>,
) -> Result<Vec<String>, String> {
    applied
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|error| format!("migration failed: {error}"))
}

thread_local! {
    /// Set while the SQLite writer runs a write alone in its transaction
    /// (see `without_savepoints`).
    static WITHOUT_SAVEPOINTS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` so that `transaction` calls inside the current transaction
/// open no savepoint and run directly in it. The caller rolls back the
/// whole transaction when `work` fails. While a savepoint is open, SQLite
/// copies every page a write changes into a savepoint journal first, which
/// made a 100-finding write on a large database take about twice as long.
pub(crate) fn without_savepoints<T>(work: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            WITHOUT_SAVEPOINTS.set(false);
        }
    }
    WITHOUT_SAVEPOINTS.set(true);
    let _reset = Reset;
    work()
}

/// Runs `work` in one transaction: commits when it returns `Ok`, rolls back
/// when it returns `Err`. SQLite transactions start with `BEGIN IMMEDIATE`,
/// so a writer takes the write lock up front and waits out the busy timeout
/// instead of failing when a read lock cannot be upgraded. Inside another
/// transaction, `work` runs under a savepoint, unless it runs within
/// `without_savepoints`.
pub fn transaction<T>(
    conn: &mut Conn,
    work: impl FnOnce(&mut Conn) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let nested = with_conn!(conn, c => {
        AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()?
            .is_some()
    });
    if nested && WITHOUT_SAVEPOINTS.get() {
        return work(conn);
    }
    match conn {
        Conn::Sqlite(c) if !nested => {
            AnsiTransactionManager::begin_transaction_sql(&mut **c, "BEGIN IMMEDIATE")?
        }
        Conn::Sqlite(c) => AnsiTransactionManager::begin_transaction(&mut **c)?,
        Conn::Postgres(c) => AnsiTransactionManager::begin_transaction(&mut **c)?,
    }
    match work(conn) {
        Ok(value) => {
            with_conn!(conn, c => AnsiTransactionManager::commit_transaction(c))?;
            Ok(value)
        }
        Err(error) => {
            match with_conn!(conn, c => AnsiTransactionManager::rollback_transaction(c)) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
                Err(rollback_error) => Err(rollback_error.into()),
            }
        }
    }
}

/// Returns the current time in UTC microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_selects_backend() {
        assert_eq!(
            parse_database_url("sqlite://data/a.db").unwrap(),
            (Backend::Sqlite, "data/a.db".to_string())
        );
        assert_eq!(
            parse_database_url("a.db").unwrap(),
            (Backend::Sqlite, "a.db".to_string())
        );
        assert_eq!(
            parse_database_url("postgres://u@h/db").unwrap().0,
            Backend::Postgres
        );
        assert!(parse_database_url("sqlite://").is_err());
        assert!(parse_database_url("mysql://h/db").is_err());
    }

    /// Reads one integer or text pragma as text.
    fn pragma(conn: &mut SqliteConnection, name: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Value {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        // The pragma's table function names its column after the pragma,
        // except for busy_timeout.
        let column = if name == "busy_timeout" {
            "timeout"
        } else {
            name
        };
        diesel::sql_query(format!(
            "SELECT CAST({column} AS TEXT) AS value FROM pragma_{name}"
        ))
        .get_result::<Value>(conn)
        .unwrap()
        .value
    }

    #[test]
    fn sqlite_pragmas_make_writes_durable() {
        let folder = tempfile::TempDir::new().unwrap();
        let path = folder.path().join("pragmas.db");
        for writer in [false, true] {
            let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
            // Start from the opposite of every setting, whatever SQLite's
            // compiled-in defaults are.
            conn.batch_execute(
                "PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF; \
                 PRAGMA journal_mode = DELETE; PRAGMA busy_timeout = 0;",
            )
            .unwrap();
            let pragmas = SqlitePragmas {
                busy_timeout: Duration::from_millis(4_321),
                writer,
            };
            pragmas.apply(&mut conn).unwrap();
            assert_eq!(pragma(&mut conn, "journal_mode"), "wal");
            assert_eq!(pragma(&mut conn, "synchronous"), "2", "FULL");
            assert_eq!(pragma(&mut conn, "foreign_keys"), "1");
            assert_eq!(pragma(&mut conn, "busy_timeout"), "4321");
            let temp_store = if writer { "2" } else { "0" };
            assert_eq!(
                pragma(&mut conn, "temp_store"),
                temp_store,
                "MEMORY for the writer"
            );
        }
    }
}
