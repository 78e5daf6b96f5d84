//! Ingest benchmark: compares the server's streaming `IngestLogs` with plain
//! batched writes of the same rows into the same table, on SQLite and on
//! PostgreSQL, and records the server's peak memory while it ingests. A
//! third row per backend runs the server's insert statements without gRPC,
//! to tell the database's share of the cost from the rest.
//!
//! The end-to-end scenarios start the release server binary, so build it
//! first: `cargo build --release && cargo bench --bench ingest -- [OPTIONS]`.
//! BENCHMARKS.md records the figures and the machine they come from.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use code_analyzer::api::convert::{
    micros_to_timestamp, object_to_struct, struct_to_json, timestamp_to_micros,
};
use code_analyzer::levels::severity_number;
use code_analyzer::pb::log_service_client::LogServiceClient;
use code_analyzer::pb::{IngestLogsRequest, IngestLogsResponse, NewLogEntry};
use code_analyzer::storage::models::NewLogEntryRow;
use code_analyzer::storage::schema::log_entries;
use code_analyzer::storage::{Conn, PoolOptions, Storage, logs, now_micros};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use prost_types::Struct;
use serde_json::Value;

const USAGE: &str = "\
Usage: cargo bench --bench ingest -- [--rows N] [--backend sqlite|postgres|all]

  --rows N       rows written by every scenario (default 1000000)
  --backend B    sqlite, postgres or all (default all)

Environment:
  CODE_ANALYZER_FIXTURES           fixture folder with logs/*.jsonl
                                   (default: ../shared/fixtures next to Cargo.toml)
  CODE_ANALYZER_BENCH_POSTGRES_URL PostgreSQL URL of a user that may create databases
                                   (default: postgres://postgres@127.0.0.1:5432/test)

Build the server first with `cargo build --release`; the bench starts
target/release/code-analyzer.";

const DEFAULT_ROWS: u64 = 1_000_000;
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Rows per batch of the server's ingest, and per transaction of the SQLite ceiling.
const SERVER_BATCH_ROWS: u64 = 1_000;
/// Rows per `COPY` statement of the PostgreSQL ceiling. Each statement commits on its own.
const COPY_ROWS: u64 = 50_000;
/// Entries per `IngestLogsRequest`, as `code-analyzer push-logs` sends them.
const ENTRIES_PER_MESSAGE: u64 = 1_000;
/// Lines generated when the fixture logs are missing, as many as the fixtures have.
const SYNTHETIC_LINES: usize = 8_000;
/// Each pass over the source lines moves timestamps one day later.
const PASS_OFFSET_MICROS: i64 = 86_400 * 1_000_000;
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// Time the server gets to start, including its migrations.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the server gets to stop after SIGTERM. Its default grace period is 10 s.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(20);
const SQLITE_MIN_RATIO: f64 = 0.65;
const POSTGRES_MIN_RATIO: f64 = 0.50;
const MAX_PEAK_RSS_MIB: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendChoice {
    Sqlite,
    Postgres,
    All,
}

#[derive(Debug)]
struct Options {
    rows: u64,
    backend: BackendChoice,
}

/// Parses the command line. `cargo bench` adds `--bench`, which is ignored.
fn parse_options() -> Result<Option<Options>, String> {
    let mut options = Options {
        rows: DEFAULT_ROWS,
        backend: BackendChoice::All,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline_value
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("option {name} requires a value\n\n{USAGE}"))
        };
        match name.as_str() {
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--rows" => {
                let text = value()?;
                options.rows = match text.replace('_', "").parse::<u64>() {
                    Ok(rows) if rows > 0 => rows,
                    _ => {
                        return Err(format!(
                            "invalid --rows {text:?}: expected a whole number above 0"
                        ));
                    }
                };
            }
            "--backend" => {
                let text = value()?;
                options.backend = match text.as_str() {
                    "sqlite" => BackendChoice::Sqlite,
                    "postgres" => BackendChoice::Postgres,
                    "all" => BackendChoice::All,
                    _ => {
                        return Err(format!(
                            "invalid --backend {text:?}: expected sqlite, postgres or all"
                        ));
                    }
                };
            }
            _ => return Err(format!("unknown argument {arg:?}\n\n{USAGE}")),
        }
    }
    Ok(Some(options))
}

/// One source log line, parsed once and replayed for every row built from it.
struct Template {
    timestamp: i64,
    level: String,
    severity_number: i32,
    message: String,
    crew_name: String,
    metadata: Option<Struct>,
    /// The metadata as the server stores it: `Struct` to JSON text.
    metadata_json: String,
}

/// Source lines for the rows, and a description of where they came from.
struct Templates {
    lines: Vec<Template>,
    source: String,
}

fn template(
    timestamp: i64,
    level: &str,
    message: String,
    crew_name: &str,
    metadata: Option<Struct>,
) -> Result<Template, String> {
    let severity_number =
        severity_number(level).ok_or_else(|| format!("unknown level {level:?}"))?;
    if message.is_empty() {
        return Err("empty message".to_string());
    }
    let metadata_json = match &metadata {
        Some(document) => struct_to_json(document)
            .map_err(|error| format!("metadata {error}"))?
            .to_string(),
        None => "{}".to_string(),
    };
    Ok(Template {
        timestamp,
        level: level.to_string(),
        severity_number,
        message,
        crew_name: crew_name.to_string(),
        metadata,
        metadata_json,
    })
}

/// Parses one JSON Lines log entry, as `code-analyzer push-logs` reads it.
fn parse_fixture_line(line: &str) -> Result<Template, String> {
    let Value::Object(mut object) =
        serde_json::from_str::<Value>(line).map_err(|error| error.to_string())?
    else {
        return Err("not a JSON object".to_string());
    };
    let mut text = |key: &str| match object.remove(key) {
        Some(Value::String(value)) => Ok(value),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!("{key} is not a string: {other}")),
    };
    let timestamp_text = text("timestamp")?;
    let level = text("level")?;
    let message = text("message")?;
    let crew_name = text("crew_name")?;
    let timestamp = prost_types::Timestamp::from_str(&timestamp_text)
        .ok()
        .and_then(|timestamp| timestamp_to_micros(&timestamp))
        .ok_or_else(|| format!("timestamp {timestamp_text:?} is not RFC 3339"))?;
    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(object_to_struct(map)),
        Some(other) => return Err(format!("metadata is not an object: {other}")),
    };
    template(timestamp, &level, message, &crew_name, metadata)
}

/// Reads every `logs/*.jsonl` file of the fixture folder, or generates
/// similar lines when the folder has none.
fn load_templates() -> Result<Templates, String> {
    let fixtures = std::env::var_os("CODE_ANALYZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    let logs = fixtures.join("logs");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&logs) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "jsonl")
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    if files.is_empty() {
        return Ok(Templates {
            lines: synthetic_templates(),
            source: format!(
                "{SYNTHETIC_LINES} synthetic lines, because {} has no *.jsonl files; set CODE_ANALYZER_FIXTURES to use real logs",
                logs.display()
            ),
        });
    }

    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_fixture_line(line) {
                Ok(template) => lines.push(template),
                Err(reason) => skipped.push(format!("{}:{}: {reason}", file.display(), index + 1)),
            }
        }
    }
    if lines.is_empty() {
        return Err(format!("no usable log lines in {}", logs.display()));
    }
    let names: Vec<String> = files
        .iter()
        .filter_map(|file| {
            file.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .collect();
    let mut source = format!(
        "{} fixture lines from {} ({})",
        lines.len(),
        logs.display(),
        names.join(", ")
    );
    if let Some(first) = skipped.first() {
        source.push_str(&format!(
            "; {} lines skipped, the first: {first}",
            skipped.len()
        ));
    }
    Ok(Templates { lines, source })
}

/// Generates lines shaped like the fixture logs: four systems, their usual
/// levels, messages of 40 to 120 bytes and two or three metadata fields.
fn synthetic_templates() -> Vec<Template> {
    const SYSTEMS: [(&str, &str); 4] = [
        ("apache", "httpd"),
        ("hdfs", "dfs.DataNode$PacketResponder"),
        ("spark", "storage.BlockManager"),
        ("zookeeper", "QuorumCnxManager$Listener"),
    ];
    const LEVELS: [&str; 8] = [
        "INFO", "INFO", "INFO", "INFO", "notice", "WARN", "WARN", "error",
    ];
    let start = 1_438_191_704_000_000; // 2015-07-29T17:41:44Z
    let per_system = SYNTHETIC_LINES / SYSTEMS.len();
    (0..SYNTHETIC_LINES)
        .map(|index| {
            let (crew_name, component) = SYSTEMS[index / per_system];
            let line = (index % per_system + 1) as u64;
            let block = (line.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1) as i64;
            let message = match index % 4 {
                0 => format!(
                    "PacketResponder {} for block blk_{block} terminating",
                    line % 3
                ),
                1 => format!(
                    "Received connection request /10.10.34.{}:{}",
                    line % 250,
                    40_000 + line % 20_000
                ),
                2 => format!("Found block rdd_{}_{} locally", line % 40, line % 7),
                _ => format!(
                    "jk2_init() Found child {} in scoreboard slot {}",
                    6_000 + line,
                    line % 12
                ),
            };
            let mut metadata = serde_json::Map::new();
            metadata.insert("component".to_string(), Value::from(component));
            if index % 2 == 0 {
                metadata.insert("pid".to_string(), Value::from(100 + line % 900));
            }
            metadata.insert("source_line".to_string(), Value::from(line));
            template(
                start + index as i64 * 1_000_000,
                LEVELS[index % LEVELS.len()],
                message,
                crew_name,
                Some(object_to_struct(metadata)),
            )
            .expect("synthetic lines use known levels and non-empty messages")
        })
        .collect()
}

/// Row `n`: the source line `n` modulo the number of lines, with the entry
/// id `bench:<n>` and its timestamp moved one day per pass over the lines.
fn row_source(templates: &[Template], n: u64) -> (&Template, String, i64) {
    let count = templates.len() as u64;
    let template = &templates[(n % count) as usize];
    let pass = (n / count) as i64;
    (
        template,
        format!("bench:{n}"),
        template.timestamp + pass * PASS_OFFSET_MICROS,
    )
}

/// Row `n` as the server builds it from the entry that `stream_entry` sends.
fn table_row(templates: &[Template], n: u64, created_at: i64) -> NewLogEntryRow {
    let (template, entry_id, timestamp) = row_source(templates, n);
    NewLogEntryRow {
        entry_id: Some(entry_id),
        crew_output_id: None,
        timestamp,
        level: template.level.clone(),
        severity_number: template.severity_number,
        message: template.message.clone(),
        crew_name: template.crew_name.clone(),
        metadata: template.metadata_json.clone(),
        created_at,
        updated_at: created_at,
    }
}

fn stream_entry(templates: &[Template], n: u64) -> NewLogEntry {
    let (template, entry_id, timestamp) = row_source(templates, n);
    NewLogEntry {
        entry_id,
        timestamp: Some(micros_to_timestamp(timestamp)),
        level: template.level.clone(),
        message: template.message.clone(),
        crew_name: template.crew_name.clone(),
        crew_output_id: 0,
        metadata: template.metadata.clone(),
    }
}

/// `NewLogEntryRow` for `COPY`, which writes every column, so a `None` must
/// mean NULL rather than the column default. The columns are the same.
#[derive(Insertable)]
#[diesel(table_name = log_entries)]
#[diesel(treat_none_as_default_value = false)]
struct CopyRow {
    entry_id: Option<String>,
    crew_output_id: Option<i64>,
    timestamp: i64,
    level: String,
    severity_number: i32,
    message: String,
    crew_name: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

impl From<NewLogEntryRow> for CopyRow {
    fn from(row: NewLogEntryRow) -> Self {
        CopyRow {
            entry_id: row.entry_id,
            crew_output_id: row.crew_output_id,
            timestamp: row.timestamp,
            level: row.level,
            severity_number: row.severity_number,
            message: row.message,
            crew_name: row.crew_name,
            metadata: row.metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Returns the CPU time, user plus system, that process `pid` has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    // NOTE: /proc counts in USER_HZ ticks, which Linux fixes at 100 per second
    // on x86-64 and arm64.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields 14 and 15 are utime and stime. The command name before them is
    // in brackets and may contain spaces, so counting starts after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND))
}

/// Server memory during one stream, in KiB.
#[derive(Debug, Default, Clone)]
struct MemoryReport {
    /// `VmHWM` of /proc/PID/status after the response: the kernel's peak RSS.
    high_water_kib: u64,
    max_sampled_kib: u64,
    /// Largest sampled `VmRSS` in each quarter of the stream, by entries sent.
    max_by_quarter_kib: [u64; 4],
    samples: u64,
}

impl MemoryReport {
    fn peak_mib(&self) -> f64 {
        self.high_water_kib.max(self.max_sampled_kib) as f64 / 1024.0
    }
}

/// Reads one `kB` field, such as `VmRSS`, of /proc/PID/status.
fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the server's `VmRSS` every `RSS_SAMPLE_INTERVAL` on its own thread.
struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<MemoryReport>,
}

impl MemorySampler {
    fn start(pid: u32, sent: Arc<AtomicU64>, rows: u64) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = MemoryReport::default();
            while !stopping.load(Ordering::Relaxed) {
                if let Some(rss) = read_status_kib(pid, "VmRSS") {
                    let quarter = (sent.load(Ordering::Relaxed) * 4 / rows).min(3) as usize;
                    report.max_by_quarter_kib[quarter] =
                        report.max_by_quarter_kib[quarter].max(rss);
                    report.max_sampled_kib = report.max_sampled_kib.max(rss);
                    report.samples += 1;
                }
                std::thread::sleep(RSS_SAMPLE_INTERVAL);
            }
            report
        });
        MemorySampler { stop, thread }
    }

    fn finish(self, pid: u32) -> MemoryReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = self.thread.join().unwrap_or_default();
        report.high_water_kib = read_status_kib(pid, "VmHWM").unwrap_or(0);
        report
    }
}

/// Returns the release server binary next to this bench binary, which
/// `cargo bench` puts in target/release/deps/.
fn server_binary() -> Result<PathBuf, String> {
    let bench = std::env::current_exe()
        .map_err(|error| format!("cannot locate the bench binary: {error}"))?;
    let release_dir = bench
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot find the target directory of {}", bench.display()))?;
    let binary = release_dir.join("code-analyzer");
    if !binary.is_file() {
        return Err(format!(
            "server binary {} not found; run `cargo build --release` first",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Returns the newest source file that is newer than `binary`, if any.
fn newer_source(binary: &Path) -> Option<PathBuf> {
    fn modified(path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path)
            .and_then(|metadata| metadata.modified())
            .ok()
    }
    fn walk(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Some(time) = modified(path)
            && newest
                .as_ref()
                .is_none_or(|(newest_time, _)| time > *newest_time)
        {
            *newest = Some((time, path.to_path_buf()));
        }
    }
    let built = modified(binary)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = None;
    for part in ["src", "proto", "migrations", "build.rs", "Cargo.toml"] {
        walk(&root.join(part), &mut newest);
    }
    newest
        .filter(|(time, _)| *time > built)
        .map(|(_, path)| path)
}

/// A `code-analyzer serve` child process. Dropping it kills the process.
struct ServerProcess {
    child: Child,
    address: SocketAddr,
    /// The last lines of the server's stderr, for error messages.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts the server on a free port of 127.0.0.1 and waits for the
    /// `code-analyzer listening on ADDR` line of its log.
    fn start(binary: &Path, database_url: &str) -> Result<ServerProcess, String> {
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;

        // The reader drains stderr until the server exits, so the server
        // does not block on a full pipe.
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        let (address_sender, address_receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(address) = listening_address(&line) {
                    let _ = address_sender.send(address);
                }
                let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });

        let mut server = ServerProcess {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr_tail,
        };
        match address_receiver.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(address) => {
                server.address = address;
                Ok(server)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the server logged no listening address within {SERVER_START_TIMEOUT:?}. Its last log lines:\n{}",
                server.tail()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = server
                    .child
                    .wait()
                    .map(|status| status.to_string())
                    .unwrap_or_default();
                Err(format!(
                    "the server exited ({status}) before listening. Its last log lines:\n{}",
                    server.tail()
                ))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tail.iter()
            .map(|line| format!("  {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM and waits for the server to drain and exit.
    fn stop(mut self) -> Result<(), String> {
        let pid = self.pid().to_string();
        let signalled = Command::new("kill").args(["-TERM", &pid]).status();
        if !signalled.as_ref().is_ok_and(|status| status.success()) {
            return Err(format!(
                "cannot send SIGTERM to server process {pid}: {signalled:?}"
            ));
        }
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "the server exited with {status}. Its last log lines:\n{}",
                        self.tail()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(error) => return Err(format!("cannot wait for server process {pid}: {error}")),
            }
        }
        Err(format!(
            "server process {pid} did not exit within {SERVER_STOP_TIMEOUT:?} of SIGTERM; killed it"
        ))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the address of the server's `code-analyzer listening on ADDR` log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("code-analyzer listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// One line of the result table.
struct Measurement {
    scenario: String,
    rows: u64,
    elapsed: Duration,
    /// Throughput as a fraction of the ceiling of the same backend.
    ratio: Option<f64>,
    stream: Option<StreamCost>,
}

impl Measurement {
    fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// Inserts the rows with one cached prepared statement per row, 1,000 rows
/// per transaction. Only the transactions are timed, not building the rows.
fn sqlite_ceiling(
    database_url: &str,
    templates: &[Template],
    rows: u64,
) -> Result<Duration, String> {
    let storage = Storage::open(database_url, &PoolOptions::default())?;
    storage.migrate()?;
    let mut conn = storage.get().map_err(|error| error.to_string())?;
    let Conn::Sqlite(conn) = &mut conn else {
        return Err(format!("{database_url} is not a SQLite database"));
    };

    let mut elapsed = Duration::ZERO;
    for start in (0..rows).step_by(SERVER_BATCH_ROWS as usize) {
        let created_at = now_micros();
        let batch: Vec<NewLogEntryRow> = (start..rows.min(start + SERVER_BATCH_ROWS))
            .map(|n| table_row(templates, n, created_at))
            .collect();
        let began = Instant::now();
        conn.immediate_transaction(|conn| {
            for row in &batch {
                diesel::insert_into(log_entries::table)
                    .values(row)
                    .execute(conn)?;
            }
            diesel::QueryResult::Ok(())
        })
        .map_err(|error| format!("SQLite insert failed: {error}"))?;
        elapsed += began.elapsed();
    }
    Ok(elapsed)
}

/// Stores the rows with `logs::insert_batch`, the statements of the
/// server's ingest, one 1,000-row batch at a time and without gRPC. The
/// server itself overlaps two batches (two connections on PostgreSQL, one
/// group commit on SQLite), so this isolates the cost of the statements.
/// Only the calls are timed, not building the rows.
fn write_path(database_url: &str, templates: &[Template], rows: u64) -> Result<Duration, String> {
    let storage = Storage::open(database_url, &PoolOptions::default())?;
    storage.migrate()?;
    let mut conn = storage.get().map_err(|error| error.to_string())?;

    let mut elapsed = Duration::ZERO;
    for start in (0..rows).step_by(SERVER_BATCH_ROWS as usize) {
        let created_at = now_micros();
        let batch: Vec<NewLogEntryRow> = (start..rows.min(start + SERVER_BATCH_ROWS))
            .map(|n| table_row(templates, n, created_at))
            .collect();
        let began = Instant::now();
        let outcome = logs::insert_batch(&mut conn, &batch)
            .map_err(|error| format!("insert_batch failed: {error}"))?;
        elapsed += began.elapsed();
        if outcome.inserted != batch.len() as u64 {
            return Err(format!(
                "insert_batch stored {} of {} rows",
                outcome.inserted,
                batch.len()
            ));
        }
    }
    Ok(elapsed)
}

/// Writes the rows with `COPY ... FROM STDIN (FORMAT binary)`, 50,000 rows
/// per statement. Only the statements are timed, not building the rows.
fn postgres_ceiling(
    database_url: &str,
    templates: &[Template],
    rows: u64,
) -> Result<Duration, String> {
    let storage = Storage::open(database_url, &PoolOptions::default())?;
    storage.migrate()?;
    let mut conn = storage.get().map_err(|error| error.to_string())?;
    let Conn::Postgres(conn) = &mut conn else {
        return Err(format!("{database_url} is not a PostgreSQL database"));
    };

    let mut elapsed = Duration::ZERO;
    for start in (0..rows).step_by(COPY_ROWS as usize) {
        let created_at = now_micros();
        let batch: Vec<CopyRow> = (start..rows.min(start + COPY_ROWS))
            .map(|n| CopyRow::from(table_row(templates, n, created_at)))
            .collect();
        let began = Instant::now();
        diesel::copy_from(log_entries::table)
            .from_insertable(&batch)
            .execute(&mut **conn)
            .map_err(|error| format!("PostgreSQL COPY failed: {error}"))?;
        elapsed += began.elapsed();
    }
    Ok(elapsed)
}

/// Streams the rows to `IngestLogs`, 1,000 entries per message, and times
/// the call from the first message to the response. A separate task builds
/// the messages, as `push-logs` does.
async fn stream_rows(
    address: SocketAddr,
    templates: Arc<Templates>,
    rows: u64,
    sent: Arc<AtomicU64>,
) -> Result<(Duration, IngestLogsResponse), String> {
    let endpoint = format!("http://{address}");
    let mut client = LogServiceClient::connect(endpoint.clone())
        .await
        .map_err(|error| format!("cannot connect to {endpoint}: {error}"))?;

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let began = Instant::now();
    let producer = tokio::spawn(async move {
        for start in (0..rows).step_by(ENTRIES_PER_MESSAGE as usize) {
            let end = rows.min(start + ENTRIES_PER_MESSAGE);
            let entries = (start..end)
                .map(|n| stream_entry(&templates.lines, n))
                .collect();
            if sender.send(IngestLogsRequest { entries }).await.is_err() {
                break;
            }
            sent.store(end, Ordering::Relaxed);
        }
    });
    let response = client
        .ingest_logs(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await;
    let elapsed = began.elapsed();
    producer
        .await
        .map_err(|error| format!("the message builder task failed: {error}"))?;

    let response = response
        .map_err(|status| {
            format!(
                "IngestLogs failed: {:?}: {}",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    if response.accepted_count != rows as i64 || response.rejected_count != 0 {
        return Err(format!(
            "IngestLogs stored {} of {rows} entries ({} duplicates, {} rejected, first rejection: {:?})",
            response.accepted_count,
            response.duplicate_count,
            response.rejected_count,
            response.rejections.first()
        ));
    }
    Ok((elapsed, response))
}

/// Cost of one stream through the server: time, memory and CPU time.
struct StreamCost {
    elapsed: Duration,
    memory: MemoryReport,
    /// CPU time of the server process during the stream.
    server_cpu: Option<Duration>,
    /// CPU time of this process, which builds and sends the messages, during the stream.
    client_cpu: Option<Duration>,
}

/// Starts the server on `database_url`, streams the rows to it while
/// sampling its memory, and stops it.
fn ingest_through_server(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    database_url: &str,
    templates: &Arc<Templates>,
    rows: u64,
) -> Result<StreamCost, String> {
    let server = ServerProcess::start(binary, database_url)?;
    let pid = server.pid();
    let sent = Arc::new(AtomicU64::new(0));
    let sampler = MemorySampler::start(pid, sent.clone(), rows);
    let server_cpu_before = cpu_time(pid);
    let client_cpu_before = cpu_time(std::process::id());

    let streamed = runtime.block_on(stream_rows(server.address, templates.clone(), rows, sent));
    let server_cpu = cpu_time(pid)
        .zip(server_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let client_cpu = cpu_time(std::process::id())
        .zip(client_cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let memory = sampler.finish(pid);
    let (elapsed, _response) =
        streamed.map_err(|error| format!("{error}\nserver log:\n{}", server.tail()))?;
    server.stop()?;
    Ok(StreamCost {
        elapsed,
        memory,
        server_cpu,
        client_cpu,
    })
}

/// Columns of one row that the ceiling and the server must store alike.
type RowContent = (Option<String>, i64, String, i32, String, String, String);

/// Checks that two databases hold the same number of rows and the same
/// content for the first, middle and last entry ids.
fn check_same_rows(first_url: &str, second_url: &str, rows: u64) -> Result<(), String> {
    let mut numbers = vec![0, rows / 2, rows - 1];
    numbers.dedup();
    let ids: Vec<String> = numbers.iter().map(|n| format!("bench:{n}")).collect();
    let read = |url: &str| -> Result<(i64, Vec<RowContent>), String> {
        let storage = Storage::open(url, &PoolOptions::default())?;
        let mut conn = storage.get().map_err(|error| error.to_string())?;
        let columns = (
            log_entries::entry_id,
            log_entries::timestamp,
            log_entries::level,
            log_entries::severity_number,
            log_entries::message,
            log_entries::crew_name,
            log_entries::metadata,
        );
        let result = match &mut conn {
            Conn::Sqlite(c) => log_entries::table
                .count()
                .get_result(&mut **c)
                .and_then(|count| {
                    let query = log_entries::table.filter(log_entries::entry_id.eq_any(&ids));
                    Ok((
                        count,
                        query
                            .select(columns)
                            .order(log_entries::entry_id)
                            .load(&mut **c)?,
                    ))
                }),
            Conn::Postgres(c) => {
                log_entries::table
                    .count()
                    .get_result(&mut **c)
                    .and_then(|count| {
                        let query = log_entries::table.filter(log_entries::entry_id.eq_any(&ids));
                        Ok((
                            count,
                            query
                                .select(columns)
                                .order(log_entries::entry_id)
                                .load(&mut **c)?,
                        ))
                    })
            }
        };
        result.map_err(|error| format!("cannot read back the rows of {url}: {error}"))
    };
    let (first_count, first_rows) = read(first_url)?;
    let (second_count, second_rows) = read(second_url)?;
    if first_count != rows as i64 || second_count != rows as i64 {
        return Err(format!(
            "expected {rows} rows in each database, found {first_count} and {second_count}"
        ));
    }
    if first_rows != second_rows || first_rows.len() != ids.len() {
        return Err(format!(
            "the ceiling and the server stored different rows:\n{first_rows:?}\n{second_rows:?}"
        ));
    }
    Ok(())
}

/// Writes every dirty page to disk, so that the writeback of one scenario's
/// files does not slow the fsyncs of the next one.
fn flush_dirty_pages() {
    match Command::new("sync").status() {
        Ok(status) if status.success() => {}
        outcome => eprintln!("warning: sync failed ({outcome:?}), so later scenarios may wait on earlier writeback"),
    }
}

fn run_sqlite(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    templates: &Arc<Templates>,
    rows: u64,
    results: &mut Vec<Measurement>,
) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("ca-bench-")
        .tempdir()
        .map_err(|error| format!("cannot create a temporary directory: {error}"))?;
    eprintln!("SQLite databases in {}", dir.path().display());
    let ceiling_url = format!("sqlite://{}", dir.path().join("ceiling.db").display());
    let write_path_url = format!("sqlite://{}", dir.path().join("write-path.db").display());
    let ingest_url = format!("sqlite://{}", dir.path().join("bench.db").display());

    flush_dirty_pages();
    eprintln!("sqlite ceiling: inserting {rows} rows");
    let ceiling = sqlite_ceiling(&ceiling_url, &templates.lines, rows)?;
    flush_dirty_pages();
    eprintln!("sqlite insert_batch: storing {rows} rows one batch at a time");
    let batched = write_path(&write_path_url, &templates.lines, rows)?;
    flush_dirty_pages();
    eprintln!("sqlite ingest: streaming {rows} entries through the server");
    let stream = ingest_through_server(runtime, binary, &ingest_url, templates, rows)?;
    check_same_rows(&ceiling_url, &write_path_url, rows)?;
    check_same_rows(&ceiling_url, &ingest_url, rows)?;

    let ratio = ceiling.as_secs_f64() / stream.elapsed.as_secs_f64();
    results.push(Measurement {
        scenario: "sqlite ceiling: INSERT, 1,000 rows/transaction".to_string(),
        rows,
        elapsed: ceiling,
        ratio: None,
        stream: None,
    });
    results.push(Measurement {
        scenario: "sqlite insert_batch alone: 1 batch at a time, no gRPC".to_string(),
        rows,
        elapsed: batched,
        ratio: Some(ceiling.as_secs_f64() / batched.as_secs_f64()),
        stream: None,
    });
    results.push(Measurement {
        scenario: "sqlite ingest: IngestLogs stream via server".to_string(),
        rows,
        elapsed: stream.elapsed,
        ratio: Some(ratio),
        stream: Some(stream),
    });
    Ok(())
}

/// Replaces the database name of a PostgreSQL URL, keeping its query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |index| authority_start + index);
    format!("{}/{database}{query}", &base[..authority_end])
}

/// Hides the password of a database URL, for messages.
fn redact(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |index| index + 3);
    match url[authority_start..].find('@') {
        Some(at) => {
            let user_info = &url[authority_start..authority_start + at];
            match user_info.split_once(':') {
                Some((user, _password)) => format!(
                    "{}{user}:***{}",
                    &url[..authority_start],
                    &url[authority_start + at..]
                ),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Databases that this run created. Dropping the value drops them.
struct BenchDatabases {
    admin: PgConnection,
    names: Vec<String>,
}

impl BenchDatabases {
    fn create(&mut self, name: &str) -> Result<(), String> {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut self.admin)
            .and_then(|_| {
                diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut self.admin)
            })
            .map_err(|error| format!("cannot create database {name}: {error}"))?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// Runs a checkpoint and flushes dirty pages, so that no scenario pays
    /// for the writeback of the one before it.
    fn settle(&mut self) -> Result<(), String> {
        diesel::sql_query("CHECKPOINT")
            .execute(&mut self.admin)
            .map_err(|error| format!("CHECKPOINT failed: {error}. The admin user needs superuser or, on PostgreSQL 15 and later, the pg_checkpoint role"))?;
        flush_dirty_pages();
        Ok(())
    }
}

impl Drop for BenchDatabases {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(error) = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
                .execute(&mut self.admin)
            {
                eprintln!("warning: failed to drop database {name}: {error}. Drop it by hand.");
            }
        }
    }
}

/// Runs the PostgreSQL scenarios, or returns why they were skipped.
fn run_postgres(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    templates: &Arc<Templates>,
    rows: u64,
    results: &mut Vec<Measurement>,
) -> Result<Option<String>, String> {
    let admin_url = std::env::var("CODE_ANALYZER_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let admin = match PgConnection::establish(&admin_url) {
        Ok(admin) => admin,
        Err(error) => {
            // libpq writes its message over several lines.
            let reason = error
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            return Ok(Some(format!(
                "cannot connect to {}: {reason}",
                redact(&admin_url)
            )));
        }
    };
    let mut databases = BenchDatabases {
        admin,
        names: Vec::new(),
    };
    let pid = std::process::id();
    let copy_name = format!("ca_bench_{pid}_copy");
    let write_path_name = format!("ca_bench_{pid}_write_path");
    let ingest_name = format!("ca_bench_{pid}_ingest");
    databases.create(&copy_name)?;
    databases.create(&write_path_name)?;
    databases.create(&ingest_name)?;
    let ceiling_url = with_database(&admin_url, &copy_name);
    let write_path_url = with_database(&admin_url, &write_path_name);
    let ingest_url = with_database(&admin_url, &ingest_name);

    databases.settle()?;
    eprintln!("postgres ceiling: copying {rows} rows");
    let ceiling = postgres_ceiling(&ceiling_url, &templates.lines, rows)?;
    databases.settle()?;
    eprintln!("postgres insert_batch: storing {rows} rows one batch at a time");
    let batched = write_path(&write_path_url, &templates.lines, rows)?;
    databases.settle()?;
    eprintln!("postgres ingest: streaming {rows} entries through the server");
    let stream = ingest_through_server(runtime, binary, &ingest_url, templates, rows)?;
    check_same_rows(&ceiling_url, &write_path_url, rows)?;
    check_same_rows(&ceiling_url, &ingest_url, rows)?;

    let ratio = ceiling.as_secs_f64() / stream.elapsed.as_secs_f64();
    results.push(Measurement {
        scenario: "postgres ceiling: COPY, 50,000 rows/statement".to_string(),
        rows,
        elapsed: ceiling,
        ratio: None,
        stream: None,
    });
    results.push(Measurement {
        scenario: "postgres insert_batch alone: 1 batch at a time, no gRPC".to_string(),
        rows,
        elapsed: batched,
        ratio: Some(ceiling.as_secs_f64() / batched.as_secs_f64()),
        stream: None,
    });
    results.push(Measurement {
        scenario: "postgres ingest: IngestLogs stream via server".to_string(),
        rows,
        elapsed: stream.elapsed,
        ratio: Some(ratio),
        stream: Some(stream),
    });
    Ok(None)
}

/// Formats a whole number with thousands separators.
fn group_digits(number: u64) -> String {
    let digits = number.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

fn print_table(results: &[Measurement]) {
    println!("| scenario | rows | seconds | rows/s | ratio to ceiling | server peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for result in results {
        let ratio = result
            .ratio
            .map_or("-".to_string(), |ratio| format!("{:.1}%", ratio * 100.0));
        let rss = result.stream.as_ref().map_or("-".to_string(), |stream| {
            format!("{:.1}", stream.memory.peak_mib())
        });
        println!(
            "| {} | {} | {:.2} | {} | {ratio} | {rss} |",
            result.scenario,
            group_digits(result.rows),
            result.elapsed.as_secs_f64(),
            group_digits(result.rows_per_second().round() as u64),
        );
    }
}

fn print_targets(results: &[Measurement]) {
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    for result in results {
        let (Some(ratio), Some(stream)) = (result.ratio, &result.stream) else {
            continue;
        };
        let memory = &stream.memory;
        let min_ratio = if result.scenario.starts_with("sqlite") {
            SQLITE_MIN_RATIO
        } else {
            POSTGRES_MIN_RATIO
        };
        let quarters: Vec<String> = memory
            .max_by_quarter_kib
            .iter()
            .map(|kib| format!("{:.1}", *kib as f64 / 1024.0))
            .collect();
        println!("{}:", result.scenario);
        println!(
            "  ratio to ceiling {:.1}% (target >= {:.0}%): {}",
            ratio * 100.0,
            min_ratio * 100.0,
            verdict(ratio >= min_ratio)
        );
        println!(
            "  server peak RSS {:.1} MiB (target < {MAX_PEAK_RSS_MIB:.0} MiB): {}",
            memory.peak_mib(),
            verdict(memory.peak_mib() < MAX_PEAK_RSS_MIB)
        );
        println!(
            "  VmHWM {:.1} MiB; largest VmRSS of {} samples by quarter of the stream: {} MiB",
            memory.high_water_kib as f64 / 1024.0,
            memory.samples,
            quarters.join(" / ")
        );
        let seconds = |cpu: Option<Duration>| {
            cpu.map_or("unknown".to_string(), |cpu| {
                format!("{:.1} s", cpu.as_secs_f64())
            })
        };
        println!(
            "  CPU time during the {:.1} s stream: server {}, bench client {}",
            stream.elapsed.as_secs_f64(),
            seconds(stream.server_cpu),
            seconds(stream.client_cpu)
        );
    }
}

/// Returns the 1-, 5- and 15-minute load averages of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

fn run() -> Result<(), String> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    let binary = server_binary()?;
    if let Some(source) = newer_source(&binary) {
        eprintln!(
            "warning: {} changed after {} was built; run `cargo build --release` to measure the current code",
            source.display(),
            binary.display()
        );
    }
    let templates = Arc::new(load_templates()?);
    let load_at_start = load_average();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the tokio runtime: {error}"))?;

    let mut results = Vec::new();
    let mut skipped = None;
    if options.backend != BackendChoice::Postgres {
        run_sqlite(&runtime, &binary, &templates, options.rows, &mut results)?;
    }
    if options.backend != BackendChoice::Sqlite {
        skipped = run_postgres(&runtime, &binary, &templates, options.rows, &mut results)?;
    }

    println!();
    println!("Rows: {}", templates.source);
    println!("Server: {}", binary.display());
    println!(
        "Load average (1, 5, 15 min): {load_at_start} at the start, {} at the end",
        load_average()
    );
    println!();
    print_table(&results);
    println!();
    print_targets(&results);
    if let Some(reason) = skipped {
        println!("PostgreSQL rows skipped: {reason}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
