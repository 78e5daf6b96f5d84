//! Test harness: a real server on 127.0.0.1:0 over a fresh database of
//! either backend, the fixture folder, and builders for small inputs.
//!
//! `backend_tests!` turns each listed async test function into two tests,
//! `NAME::sqlite` and `NAME::postgres`, each with its own database and server.

#![allow(dead_code)]

pub mod process;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use code_analyzer::pb;
use code_analyzer::pb::analysis_service_client::AnalysisServiceClient;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use code_analyzer::pb::fix_service_client::FixServiceClient;
use code_analyzer::pb::import_sarif_request::Payload;
use code_analyzer::pb::log_service_client::LogServiceClient;
use code_analyzer::pb::task_service_client::TaskServiceClient;
use code_analyzer::server::{self, ServerOptions};
use code_analyzer::storage::{PoolOptions, Storage};
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Environment variable with the admin URL of the PostgreSQL server that
/// tests create their databases on.
pub const POSTGRES_URL_VARIABLE: &str = "CODE_ANALYZER_TEST_POSTGRES_URL";
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Environment variable with the fixture folder. The default is
/// `../shared/fixtures` next to the project root.
pub const FIXTURES_VARIABLE: &str = "CODE_ANALYZER_FIXTURES";

/// Maximum time one test body may run before it fails.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Source root of the fixture SARIF logs, whose artifact URIs are
/// `file:///home/dev/crewAI/lib/...`.
pub const FIXTURE_SOURCE_ROOT: &str = "/home/dev/crewAI";

/// Opens a plain SQLite connection that waits up to ten seconds for a
/// lock, as the server's own connections do: a pool that was just dropped
/// may still be finishing a connection in the background.
pub fn open_sqlite(path: &str) -> SqliteConnection {
    let mut connection = SqliteConnection::establish(path).expect("cannot open the SQLite file");
    diesel::connection::SimpleConnection::batch_execute(
        &mut connection,
        "PRAGMA busy_timeout = 10000;",
    )
    .expect("cannot set the busy timeout");
    connection
}

/// Holds a lock that blocks every write to `table` (on SQLite, to the
/// whole database) until the returned sender is dropped or sent to.
pub fn hold_write_lock(database: &TestDatabase, table: &str) -> std::sync::mpsc::Sender<()> {
    use diesel::connection::SimpleConnection;
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let url = database.url().to_string();
    let lock = format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE");
    let sqlite = matches!(database, TestDatabase::Sqlite { .. });
    std::thread::spawn(move || {
        if sqlite {
            let mut conn = open_sqlite(url.trim_start_matches("sqlite://"));
            conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
            conn.batch_execute("ROLLBACK").unwrap();
        } else {
            let mut conn = PgConnection::establish(&url).unwrap();
            conn.batch_execute(&lock).unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
            conn.batch_execute("ROLLBACK").unwrap();
        }
    });
    is_locked
        .recv_timeout(Duration::from_secs(10))
        .expect("lock not taken");
    release
}

/// Whether the suite runs under CI, where a missing PostgreSQL server or
/// fixture fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// Returns the path of a fixture file, or `None` after printing why the
/// test is skipped. Under CI a missing fixture fails the test.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let root = std::env::var_os(FIXTURES_VARIABLE)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    let path = root.join(relative);
    if path.is_file() {
        return Some(path);
    }
    if in_ci() {
        panic!(
            "fixture {} not found; set {FIXTURES_VARIABLE} to the fixture folder",
            path.display()
        );
    }
    eprintln!("skipped: fixture {} not found", path.display());
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test. A PostgreSQL database is dropped
/// when the value is dropped, and a SQLite file goes with its temporary folder.
pub enum TestDatabase {
    Sqlite {
        url: String,
        path: PathBuf,
        _folder: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

fn random_suffix() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish() as u32
}

/// Replaces the database name of a PostgreSQL URL, keeping its query string.
fn with_database_name(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let host_start = base.find("://").map(|index| index + 3).unwrap_or(0);
    let host_end = base[host_start..]
        .find('/')
        .map(|index| host_start + index)
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

#[derive(QueryableByName)]
struct TextRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

impl TestDatabase {
    /// Creates a fresh database, or returns `None` after printing why the
    /// test is skipped (PostgreSQL not reachable outside CI).
    pub fn create(backend: Backend) -> Option<TestDatabase> {
        match backend {
            Backend::Sqlite => {
                let folder = tempfile::TempDir::new().expect("cannot create a temporary folder");
                let path = folder.path().join("test.db");
                Some(TestDatabase::Sqlite {
                    url: format!("sqlite://{}", path.display()),
                    path,
                    _folder: folder,
                })
            }
            Backend::Postgres => Self::create_postgres(),
        }
    }

    fn create_postgres() -> Option<TestDatabase> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let admin_url = std::env::var(POSTGRES_URL_VARIABLE)
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = match PgConnection::establish(&admin_url) {
            Ok(connection) => connection,
            Err(error) if in_ci() => {
                panic!(
                    "PostgreSQL not reachable at {admin_url} ({error}); set {POSTGRES_URL_VARIABLE}"
                )
            }
            Err(error) => {
                eprintln!("skipped: PostgreSQL not reachable at {admin_url} ({error})");
                return None;
            }
        };
        let name = format!(
            "ca_test_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_suffix()
        );
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .unwrap_or_else(|error| {
                panic!("cannot create database {name} at {admin_url}: {error}")
            });
        Some(TestDatabase::Postgres {
            url: with_database_name(&admin_url, &name),
            admin_url,
            name,
        })
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Sqlite { url, .. } | TestDatabase::Postgres { url, .. } => url,
        }
    }

    /// Runs a query that returns one row with one text column named
    /// `value`, on a connection of its own, and returns that text.
    pub fn query_text(&self, sql: &str) -> String {
        let query = diesel::sql_query(sql);
        let row: TextRow = match self {
            TestDatabase::Sqlite { path, .. } => {
                let path = path.to_str().expect("temporary path is not UTF-8");
                query.get_result(&mut open_sqlite(path))
            }
            TestDatabase::Postgres { url, .. } => {
                let mut connection =
                    PgConnection::establish(url).expect("cannot connect to the test database");
                query.get_result(&mut connection)
            }
        }
        .unwrap_or_else(|error| panic!("query {sql:?} failed: {error}"));
        row.value
    }

    /// Runs statements that return no rows, on a connection of its own.
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        match self {
            TestDatabase::Sqlite { path, .. } => {
                let path = path.to_str().expect("temporary path is not UTF-8");
                open_sqlite(path).batch_execute(sql)
            }
            TestDatabase::Postgres { url, .. } => PgConnection::establish(url)
                .expect("cannot connect to the test database")
                .batch_execute(sql),
        }
        .unwrap_or_else(|error| panic!("statement {sql:?} failed: {error}"));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let TestDatabase::Postgres {
            admin_url, name, ..
        } = self
        else {
            return;
        };
        // FORCE ends the server's pooled connections, which may outlive the
        // aborted server task for a moment.
        let dropped = PgConnection::establish(admin_url)
            .map_err(|error| error.to_string())
            .and_then(|mut admin| {
                diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .map_err(|error| error.to_string())
            });
        if let Err(error) = dropped {
            eprintln!("cannot drop test database {name}: {error}");
        }
    }
}

/// Server options of tests: the defaults with a short shutdown grace period.
pub fn test_options() -> ServerOptions {
    ServerOptions {
        shutdown_grace: Duration::from_millis(100),
        ..ServerOptions::default()
    }
}

/// A server running in this process on its own database, with a client of
/// each service. Dropping it stops the server, then drops the database.
pub struct TestServer {
    pub address: SocketAddr,
    pub backend: Backend,
    pub channel: Channel,
    pub crew: CrewServiceClient<Channel>,
    pub analysis: AnalysisServiceClient<Channel>,
    pub fixes: FixServiceClient<Channel>,
    pub logs: LogServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Declared last so that it is dropped after the server task is aborted.
    pub database: TestDatabase,
}

impl TestServer {
    /// Starts a server with `test_options`, or returns `None` when the
    /// backend is not available and the test is skipped.
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, test_options()).await
    }

    pub async fn start_with(backend: Backend, options: ServerOptions) -> Option<TestServer> {
        // A panic in the setup (PostgreSQL unreachable under CI) keeps its message.
        let database = tokio::task::spawn_blocking(move || TestDatabase::create(backend))
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))?;

        let pool = PoolOptions {
            max_size: 4,
            connection_timeout: Duration::from_secs(10),
            ..PoolOptions::default()
        };
        let storage = Storage::open(database.url(), &pool).expect("cannot open storage");
        let migrating = storage.clone();
        let applied = tokio::task::spawn_blocking(move || migrating.migrate())
            .await
            .expect("migration task failed");
        if let Err(error) = applied {
            panic!("migrations failed on {}: {error}", database.url());
        }
        Some(Self::serve_storage(database, storage, options).await)
    }

    /// Serves `storage`, which must be migrated, on 127.0.0.1:0. A test that
    /// keeps a clone of `storage` takes connections from the server's own pool.
    pub async fn serve_storage(
        database: TestDatabase,
        storage: Storage,
        options: ServerOptions,
    ) -> TestServer {
        let backend = match database {
            TestDatabase::Sqlite { .. } => Backend::Sqlite,
            TestDatabase::Postgres { .. } => Backend::Postgres,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind 127.0.0.1:0");
        let address = listener.local_addr().expect("listener has no address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            if let Err(error) = server::serve(storage, options, listener, stop).await {
                eprintln!("test server on {address} failed: {error}");
            }
        });

        let channel = Endpoint::from_shared(format!("http://{address}"))
            .expect("invalid endpoint")
            .connect()
            .await
            .unwrap_or_else(|error| {
                panic!("cannot connect to the test server on {address}: {error}")
            });
        TestServer {
            address,
            backend,
            crew: CrewServiceClient::new(channel.clone()),
            analysis: AnalysisServiceClient::new(channel.clone()),
            fixes: FixServiceClient::new(channel.clone()),
            logs: LogServiceClient::new(channel.clone()),
            channel,
            shutdown: Some(shutdown),
            task,
            database,
        }
    }

    /// Creates a PENDING crew output and returns it.
    pub async fn create_crew_output(&mut self, crew_name: &str) -> pb::CrewOutput {
        self.crew
            .create_crew_output(pb::CreateCrewOutputRequest {
                crew_name: crew_name.to_string(),
                output_type: "review".to_string(),
                ..Default::default()
            })
            .await
            .expect("CreateCrewOutput failed")
            .into_inner()
    }

    /// Enqueues a task on `queue` with default settings, claims it for
    /// worker "w1" and returns it with its lease token.
    pub async fn enqueue_and_claim(&self, queue: &str) -> pb::Task {
        let mut tasks = TaskServiceClient::new(self.channel.clone());
        tasks
            .enqueue_task(pb::EnqueueTaskRequest {
                queue: queue.to_string(),
                ..Default::default()
            })
            .await
            .expect("EnqueueTask failed");
        tasks
            .claim_tasks(pb::ClaimTasksRequest {
                queue: queue.to_string(),
                worker: "w1".to_string(),
                ..Default::default()
            })
            .await
            .expect("ClaimTasks failed")
            .into_inner()
            .tasks
            .remove(0)
    }

    /// Records findings and returns them in request order.
    pub async fn record_findings(
        &mut self,
        crew_output_id: i64,
        findings: Vec<pb::NewFinding>,
    ) -> Vec<pb::Finding> {
        self.analysis
            .record_findings(pb::RecordFindingsRequest {
                crew_output_id,
                findings,
            })
            .await
            .expect("RecordFindings failed")
            .into_inner()
            .findings
    }

    /// Sends the options, then `log` in chunks of `chunk_bytes`.
    pub async fn import_sarif(
        &mut self,
        options: pb::ImportSarifOptions,
        log: &[u8],
        chunk_bytes: usize,
    ) -> Result<pb::ImportSarifResponse, Status> {
        let messages = sarif_messages(options, log, chunk_bytes);
        self.analysis
            .import_sarif(tokio_stream::iter(messages))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Sends each inner vector as one IngestLogs message of one stream.
    pub async fn ingest(
        &mut self,
        messages: Vec<Vec<pb::NewLogEntry>>,
    ) -> Result<pb::IngestLogsResponse, Status> {
        let requests: Vec<pb::IngestLogsRequest> = messages
            .into_iter()
            .map(|entries| pb::IngestLogsRequest { entries })
            .collect();
        self.logs
            .ingest_logs(tokio_stream::iter(requests))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Returns the total_size of QueryLogs without filters.
    pub async fn stored_log_count(&mut self) -> i64 {
        self.logs
            .query_logs(pb::QueryLogsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("QueryLogs failed")
            .into_inner()
            .total_size
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

/// Builds the options message followed by the log in chunks.
pub fn sarif_messages(
    options: pb::ImportSarifOptions,
    log: &[u8],
    chunk_bytes: usize,
) -> Vec<pb::ImportSarifRequest> {
    let mut messages = vec![pb::ImportSarifRequest {
        payload: Some(Payload::Options(options)),
    }];
    messages.extend(
        log.chunks(chunk_bytes.max(1))
            .map(|chunk| pb::ImportSarifRequest {
                payload: Some(Payload::Chunk(chunk.to_vec())),
            }),
    );
    messages
}

/// Import options with the source root of the small log and the fixtures.
pub fn crewai_options() -> pb::ImportSarifOptions {
    pb::ImportSarifOptions {
        source_root: FIXTURE_SOURCE_ROOT.to_string(),
        ..Default::default()
    }
}

/// Compresses `bytes` with gzip.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip into memory failed");
    encoder.finish().expect("gzip into memory failed")
}

/// A SARIF 2.1.0 log with two runs. Run "ruff": three findings, two with
/// a fix, one with an analyzer fingerprint, one in a path with `%20`.
/// Run "bandit": one finding whose rule has a security severity.
pub const SMALL_SARIF: &str = r#"{
  "version": "2.1.0",
  "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
  "runs": [
    {
      "tool": {"driver": {"name": "ruff", "version": "0.17.6", "rules": [
        {"id": "F401", "shortDescription": {"text": "unused-import"}},
        {"id": "E501", "defaultConfiguration": {"level": "note"}}
      ]}},
      "results": [
        {"ruleId": "F401", "level": "error", "message": {"text": "`os` imported but unused"},
         "locations": [{"physicalLocation": {
           "artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/agent.py"},
           "region": {"startLine": 3, "startColumn": 8, "endLine": 3, "endColumn": 10}}}],
         "fixes": [{"description": {"text": "Remove unused import: `os`"},
           "artifactChanges": [{"artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/agent.py"},
             "replacements": [{"deletedRegion": {"startLine": 3, "startColumn": 1, "endLine": 4, "endColumn": 1}}]}]}]},
        {"ruleId": "E501", "message": {"text": "Line too long (120 > 88)"},
         "locations": [{"physicalLocation": {
           "artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/agent.py"},
           "region": {"startLine": 40, "startColumn": 89}}}]},
        {"ruleId": "F401", "level": "error", "message": {"text": "`sys` imported but unused"},
         "partialFingerprints": {"primaryLocationLineHash": "5f2b1c:1"},
         "locations": [{"physicalLocation": {
           "artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/my%20tools/search.py"},
           "region": {"startLine": 1}}}],
         "fixes": [{"description": {"text": "Remove unused import: `sys`"},
           "artifactChanges": [{"artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/my%20tools/search.py"},
             "replacements": []}]}]}
      ]
    },
    {
      "tool": {"driver": {"name": "bandit", "rules": [
        {"id": "B105", "properties": {"security-severity": "9.1"}}
      ]}},
      "results": [
        {"ruleId": "B105", "level": "warning", "message": {"text": "Possible hardcoded password: 'hunter2'"},
         "locations": [{"physicalLocation": {
           "artifactLocation": {"uri": "file:///home/dev/crewAI/lib/crewai/agent.py"},
           "region": {"startLine": 12}}}]}
      ]
    }
  ]
}"#;

/// The file of SMALL_SARIF with findings of both runs.
pub const SMALL_SARIF_AGENT_PATH: &str = "lib/crewai/agent.py";
/// The file of SMALL_SARIF whose URI has a `%20` escape.
pub const SMALL_SARIF_TOOLS_PATH: &str = "lib/crewai/my tools/search.py";

/// Builds a finding with a path, a rule id and a message, and defaults for the rest.
pub fn new_finding(file_path: &str, rule_id: &str, message: &str) -> pb::NewFinding {
    pb::NewFinding {
        file_path: file_path.to_string(),
        rule_id: rule_id.to_string(),
        message: message.to_string(),
        ..Default::default()
    }
}

/// Builds a log entry with an id, a level and a message, and defaults for the rest.
pub fn log_entry(entry_id: &str, level: &str, message: &str) -> pb::NewLogEntry {
    pb::NewLogEntry {
        entry_id: entry_id.to_string(),
        level: level.to_string(),
        message: message.to_string(),
        ..Default::default()
    }
}

/// Returns the timestamp `seconds` after 2026-01-01T00:00:00Z.
pub fn time(seconds: i64) -> Timestamp {
    Timestamp {
        seconds: 1_767_225_600 + seconds,
        nanos: 0,
    }
}

/// Converts a JSON object to a protobuf `Struct`, and panics on other JSON.
pub fn to_struct(value: serde_json::Value) -> Struct {
    match to_value(value).kind {
        Some(Kind::StructValue(document)) => document,
        other => panic!("expected a JSON object, got {other:?}"),
    }
}

fn to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(flag),
        serde_json::Value::Number(number) => {
            Kind::NumberValue(number.as_f64().expect("number out of range"))
        }
        serde_json::Value::String(text) => Kind::StringValue(text),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(Struct {
            fields: object
                .into_iter()
                .map(|(key, value)| (key, to_value(value)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// Converts a protobuf `Struct` to JSON, with every number as a JSON float.
pub fn from_struct(document: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        document
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), from_value(value)))
            .collect(),
    )
}

fn from_value(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::NumberValue(number)) => serde_json::json!(number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(from_value).collect())
        }
        Some(Kind::StructValue(inner)) => from_struct(inner),
    }
}

/// Builds a JSON object nested `depth` levels deep: `{"a": {"a": ... {}}}`.
pub fn nested_struct(depth: usize) -> Struct {
    let mut document = serde_json::json!({});
    for _ in 1..depth {
        document = serde_json::json!({ "a": document });
    }
    to_struct(document)
}

/// Maximum time `wait_until` waits before it fails the test.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `condition` every 20 ms until it is true, for states that another
/// thread or process reaches later, such as a log line or a database
/// session. Fails the test, naming `awaited`, after `WAIT_TIMEOUT`.
pub async fn wait_until(awaited: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {WAIT_TIMEOUT:?} waiting for {awaited}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the error of a call that must fail.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(result: Result<tonic::Response<T>, Status>) -> Status {
    match result {
        Ok(response) => panic!("expected an error, got {:?}", response.into_inner()),
        Err(status) => status,
    }
}

/// Checks the code of a status and that its message starts with `prefix`.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, prefix: &str) {
    assert_eq!(
        status.code(),
        code,
        "unexpected code; message: {}",
        status.message()
    );
    assert!(
        status.message().starts_with(prefix),
        "message {:?} does not start with {prefix:?}",
        status.message()
    );
}

/// Generates the tests `NAME::sqlite` and `NAME::postgres` for each listed
/// `async fn NAME(server: TestServer)` of the test file. Each test gets its
/// own database and server. Before a name, an optional `#[ignore = "REASON"]` is
/// copied to both tests, and an optional `#[options(EXPR)]` sets the
/// `ServerOptions`, in this order.
#[macro_export]
macro_rules! backend_tests {
    ($(
        $(#[ignore = $reason:literal])?
        $(#[options($options:expr)])?
        $name:ident
    ),+ $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn start(backend: $crate::common::Backend) {
                let options = $crate::server_options!($($options)?);
                let Some(server) = $crate::common::TestServer::start_with(backend, options).await else {
                    return;
                };
                tokio::time::timeout($crate::common::TEST_TIMEOUT, super::$name(server))
                    .await
                    .expect("test timed out");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $reason])?
            async fn sqlite() {
                start($crate::common::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $reason])?
            async fn postgres() {
                start($crate::common::Backend::Postgres).await;
            }
        }
    )+};
}

/// Generates the tests `NAME::sqlite` and `NAME::postgres` for each listed
/// `fn NAME(server: TYPE)` of the test file, where `TYPE::START(backend)`
/// returns `Option<TYPE>`: a served process on a fresh database, or `None`
/// when the backend is skipped.
#[macro_export]
macro_rules! process_backend_tests {
    ($type:ident::$start:ident; $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                if let Some(server) = super::$type::$start($crate::common::Backend::Sqlite) {
                    super::$name(server);
                }
            }

            #[test]
            fn postgres() {
                if let Some(server) = super::$type::$start($crate::common::Backend::Postgres) {
                    super::$name(server);
                }
            }
        }
    )+};
}

#[macro_export]
#[doc(hidden)]
macro_rules! server_options {
    () => {
        $crate::common::test_options()
    };
    ($options:expr) => {
        $options
    };
}
