//! Scale benchmark. It builds a database of many findings and log entries
//! from the fixture SARIF logs and log samples, and starts the release
//! server binary on it as a child process. Concurrent tonic clients then
//! drive it, and the bench prints latency percentiles per scenario and the
//! server's peak memory.
//!
//! Run: `cargo build --release && cargo bench --bench scale -- --backend sqlite
//! --findings 1000000 --logs 10000000`. BENCHMARKS.md records the figures.

#[path = "../tests/common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use code_analyzer::api::convert::micros_to_timestamp;
use code_analyzer::levels::severity_number;
use code_analyzer::pb;
use code_analyzer::pb::analysis_service_client::AnalysisServiceClient;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use code_analyzer::pb::log_service_client::LogServiceClient;
use code_analyzer::sarif::{self, ImportOptions, ParsedFinding};
use code_analyzer::storage::models::{NewCrewOutputRow, NewFindingRow, NewLogEntryRow};
use code_analyzer::storage::schema::log_entries;
use code_analyzer::storage::{
    Conn, PoolOptions, Storage, findings, parse_database_url, transaction,
};
use diesel::{Connection, RunQueryDsl};
use process::ServeProcess;
use tonic::transport::Channel;

const USAGE: &str = "\
Usage: cargo bench --bench scale -- [--backend sqlite|postgres|all] [--findings N] [--logs N]
       [--clients N] [--ingest-rows N] [--write-rate N,...] [--only NAME,...] [--keep]
       [--reuse URL]

  --findings N     findings in the database before the scenarios (default 1000000)
  --logs N         log entries in the database before the scenarios (default 10000000)
  --clients N      concurrent clients of the read scenarios (default 4)
  --ingest-rows N  entries of the single-stream ingest, split over 32 streams after (default 320000)
  --write-rate N,...  calls a second that the 64 paced writers send in all, one run per
                   rate (default 100)
  --only NAMES     scenarios to run, of history, list, logs, compare, import, writes, ingest
                   (default all)
  --keep           keep the database after the run and print where it is, to read query
                   plans on it (the default drops it)
  --reuse URL      run on a database that `--keep` kept, with the same --findings and --logs,
                   instead of loading one; the database stays after the run

Environment: CODE_ANALYZER_FIXTURES (default ../shared/fixtures next to Cargo.toml) and
CODE_ANALYZER_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test).";

/// Source root of the fixture SARIF logs' absolute artifact URIs.
const FIXTURE_SOURCE_ROOT: &str = "/home/dev/crewAI";
/// Findings per bulk run, and crews the bulk runs and log entries belong to.
const RUN_FINDINGS: usize = 1_000;
const CREWS: usize = 16;
/// Findings in each of the two runs that CompareRuns compares.
const COMPARE_RUN_FINDINGS: usize = 100_000;
/// Log entries are 10 ms apart, so 10,000,000 entries span about 28 hours.
const LOG_SPACING_MICROS: i64 = 10_000;
const LOG_START_MICROS: i64 = 1_764_806_400_000_000; // 2025-12-04T00:00:00Z
/// Rows per bulk transaction.
const BULK_TRANSACTION_ROWS: usize = 20_000;
/// Rows per multi-row `INSERT` of log entries on PostgreSQL, under the
/// 65,535 bind parameters of its protocol.
const POSTGRES_LOG_CHUNK: usize = 5_000;

struct Options {
    backends: Vec<&'static str>,
    findings: usize,
    logs: usize,
    clients: usize,
    ingest_rows: usize,
    write_rates: Vec<usize>,
    only: Option<Vec<String>>,
    keep: bool,
    reuse: Option<String>,
}

/// Scenario names that `--only` accepts, in the order they run.
const SCENARIOS: [&str; 7] = [
    "history", "list", "logs", "compare", "import", "writes", "ingest",
];

impl Options {
    fn runs(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == scenario))
    }
}

fn parse_options() -> Options {
    let mut options = Options {
        backends: vec!["sqlite", "postgres"],
        findings: 1_000_000,
        logs: 10_000_000,
        clients: 4,
        ingest_rows: 320_000,
        write_rates: vec![100],
        only: None,
        keep: false,
        reuse: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{arg} needs a value\n\n{USAGE}"))
        };
        let number = |text: String| -> usize {
            text.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{text:?} is not a number\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--findings" => options.findings = number(value()),
            "--logs" => options.logs = number(value()),
            "--clients" => options.clients = number(value()).max(1),
            "--ingest-rows" => options.ingest_rows = number(value()).max(32),
            "--write-rate" => {
                options.write_rates = value()
                    .split(',')
                    .map(|rate| number(rate.to_string()).max(1))
                    .collect()
            }
            "--only" => {
                let names: Vec<String> = value().split(',').map(str::to_string).collect();
                if let Some(unknown) = names
                    .iter()
                    .find(|name| !SCENARIOS.contains(&name.as_str()))
                {
                    panic!("unknown scenario {unknown:?}\n\n{USAGE}");
                }
                options.only = Some(names);
            }
            "--keep" => options.keep = true,
            "--reuse" => options.reuse = Some(value()),
            "--backend" => {
                options.backends = match value().as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "all" => vec!["sqlite", "postgres"],
                    other => panic!("unknown backend {other:?}\n\n{USAGE}"),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes --bench to every benchmark program.
            "--bench" => {}
            other => panic!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if let Some(url) = &options.reuse {
        let (backend, _) =
            parse_database_url(url).unwrap_or_else(|error| panic!("{error}\n\n{USAGE}"));
        options.backends = vec![backend.name()];
    }
    options
}

fn fixtures() -> PathBuf {
    std::env::var_os("CODE_ANALYZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

/// The findings of one fixture SARIF log, as the server's importer parses them.
fn fixture_findings(name: &str) -> Vec<ParsedFinding> {
    let path = fixtures().join("sarif").join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let plain = sarif::decompress(bytes, 1 << 30).expect("cannot decompress the fixture");
    let options = ImportOptions {
        source_root: Some(FIXTURE_SOURCE_ROOT.to_string()),
    };
    sarif::parse(&plain, &options)
        .expect("cannot parse the fixture")
        .into_iter()
        .flat_map(|run| run.findings)
        .collect()
}

/// One fixture log line: crew (source system), level and message.
struct LogLine {
    system: String,
    level: String,
    severity: i32,
    message: String,
    metadata: String,
}

fn fixture_log_lines() -> Vec<LogLine> {
    let folder = fixtures().join("logs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", folder.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("cannot read a log fixture");
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line).expect("invalid JSON line");
            let level = value["level"].as_str().unwrap_or("INFO").to_string();
            let Some(severity) = severity_number(&level) else {
                continue;
            };
            lines.push(LogLine {
                system: value["crew_name"].as_str().unwrap_or("system").to_string(),
                severity,
                level,
                message: value["message"].as_str().unwrap_or("").to_string(),
                metadata: value["metadata"].to_string(),
            });
        }
    }
    assert!(!lines.is_empty(), "no log lines in {}", folder.display());
    lines
}

/// Returns the crew of log entry `n`: the source system and a number, so
/// each system's lines spread over four crews.
fn log_crew(line: &LogLine, n: usize) -> String {
    format!("{}-{}", line.system, n % 4)
}

fn finding_row(source: &ParsedFinding, run: i64, path_prefix: &str, now: i64) -> NewFindingRow {
    let file_path = format!("{path_prefix}{}", source.file_path);
    NewFindingRow {
        crew_output_id: run,
        fingerprint: code_analyzer::fingerprint::derive(
            &source.rule_id,
            &file_path,
            &source.message,
        ),
        fingerprint_version: code_analyzer::fingerprint::DERIVED_VERSION,
        file_path,
        rule_id: source.rule_id.clone(),
        message: source.message.clone(),
        priority: source.priority as i32,
        status: pb::FindingStatus::Open as i32,
        status_reason: String::new(),
        start_line: source.start_line,
        end_line: source.end_line,
        start_column: source.start_column,
        end_column: source.end_column,
        analysis: source.analysis.clone(),
        created_at: now,
        updated_at: now,
        dismiss_reason: 0,
    }
}

fn new_run(conn: &mut Conn, crew_name: &str) -> i64 {
    let now = code_analyzer::storage::now_micros();
    let row = NewCrewOutputRow {
        crew_name: crew_name.to_string(),
        output_type: "code_review".to_string(),
        status: pb::CrewOutputStatus::Succeeded as i32,
        results: "{}".to_string(),
        error_message: String::new(),
        started_at: Some(now),
        finished_at: Some(now),
        created_at: now,
        updated_at: now,
        keep: 0,
    };
    code_analyzer::storage::crew_outputs::insert(conn, &row)
        .expect("cannot insert a run")
        .id
}

/// Inserts findings rows in transactions of `BULK_TRANSACTION_ROWS`.
fn insert_findings(conn: &mut Conn, rows: Vec<NewFindingRow>) {
    for chunk in rows.chunks(BULK_TRANSACTION_ROWS) {
        transaction(conn, |conn| findings::insert_rows(conn, chunk)).expect("bulk insert failed");
    }
}

/// Inputs of the scenarios, taken from the bulk load.
struct Dataset {
    compare_runs: (i64, i64),
    file_paths: Vec<String>,
    rule_ids: Vec<String>,
    log_crews: Vec<String>,
    log_end_micros: i64,
    sarif_bytes: Vec<u8>,
}

/// Fills the database directly through the storage layer, unless `load`
/// is false because an earlier run of the same sizes filled it, and returns
/// what the scenarios need to know of its contents.
fn bulk_load(database_url: &str, findings_total: usize, logs_total: usize, load: bool) -> Dataset {
    let storage = Storage::open(database_url, &PoolOptions::default()).expect("cannot open");
    storage.migrate().expect("migrations failed");
    let mut conn = storage.get().expect("no connection");
    let older = fixture_findings("ruff-crewai-2026-05.sarif.gz");
    let newer = fixture_findings("ruff-crewai-2026-08.sarif.gz");
    let all: Vec<&ParsedFinding> = older.iter().chain(newer.iter()).collect();
    let lines = fixture_log_lines();
    let compare_runs = if load {
        load_rows(
            &mut conn,
            (&older, &newer),
            &all,
            &lines,
            findings_total,
            logs_total,
        )
    } else {
        // A load creates the two compare runs first.
        (1, 2)
    };

    let mut file_paths: Vec<String> = all.iter().map(|f| f.file_path.clone()).collect();
    file_paths.sort();
    file_paths.dedup();
    let mut rule_ids: Vec<String> = all.iter().map(|f| f.rule_id.clone()).collect();
    rule_ids.sort();
    rule_ids.dedup();
    let mut log_crews: Vec<String> = (0..lines.len().min(8_000))
        .map(|n| log_crew(&lines[n], n))
        .collect();
    log_crews.sort();
    log_crews.dedup();
    let sarif_path = fixtures().join("sarif/ruff-crewai-2026-08.sarif.gz");
    Dataset {
        compare_runs,
        file_paths,
        rule_ids,
        log_crews,
        log_end_micros: LOG_START_MICROS + logs_total as i64 * LOG_SPACING_MICROS,
        sarif_bytes: std::fs::read(sarif_path).expect("cannot read the SARIF fixture"),
    }
}

/// Inserts the two compare runs, runs of `RUN_FINDINGS` findings from `all`
/// until `findings_total` in all, and `logs_total` log entries, and returns
/// the ids of the compare runs.
fn load_rows(
    conn: &mut Conn,
    (older, newer): (&[ParsedFinding], &[ParsedFinding]),
    all: &[&ParsedFinding],
    lines: &[LogLine],
    findings_total: usize,
    logs_total: usize,
) -> (i64, i64) {
    let started = Instant::now();

    // Two runs of one crew, each its fixture repeated under numbered
    // folders, so they share most fingerprints as real consecutive runs do.
    let compare_size = COMPARE_RUN_FINDINGS.min(findings_total / 4).max(1);
    let mut compare_runs = Vec::new();
    for source in [older, newer] {
        let run = new_run(conn, "compare-crew");
        let now = code_analyzer::storage::now_micros();
        let rows: Vec<NewFindingRow> = (0..compare_size)
            .map(|index| {
                let prefix = format!("copy{}/", index / source.len());
                finding_row(&source[index % source.len()], run, &prefix, now)
            })
            .collect();
        insert_findings(conn, rows);
        compare_runs.push(run);
    }

    let mut stored = 2 * compare_size;
    let mut run_index = 0;
    while stored < findings_total {
        let mut rows = Vec::with_capacity(BULK_TRANSACTION_ROWS);
        while rows.len() < BULK_TRANSACTION_ROWS && stored + rows.len() < findings_total {
            let run = new_run(conn, &format!("ruff-crew-{}", run_index % CREWS));
            let now = code_analyzer::storage::now_micros();
            let count = RUN_FINDINGS.min(findings_total - stored - rows.len());
            for index in 0..count {
                let source = all[(run_index * RUN_FINDINGS + index) % all.len()];
                rows.push(finding_row(source, run, "", now));
            }
            run_index += 1;
        }
        stored += rows.len();
        insert_findings(conn, rows);
    }
    println!(
        "  loaded {stored} findings in {run_index} runs plus 2 compare runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut n = 0;
    while n < logs_total {
        let end = (n + BULK_TRANSACTION_ROWS * 5).min(logs_total);
        let now = code_analyzer::storage::now_micros();
        let rows: Vec<NewLogEntryRow> = (n..end)
            .map(|n| {
                let line = &lines[n % lines.len()];
                NewLogEntryRow {
                    entry_id: Some(format!("bulk:{n}")),
                    crew_output_id: None,
                    timestamp: LOG_START_MICROS + n as i64 * LOG_SPACING_MICROS,
                    level: line.level.clone(),
                    severity_number: line.severity,
                    message: line.message.clone(),
                    crew_name: log_crew(line, n),
                    metadata: line.metadata.clone(),
                    created_at: now,
                    updated_at: now,
                }
            })
            .collect();
        insert_logs(conn, &rows);
        n = end;
    }
    println!(
        "  loaded {logs_total} log entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Conn::Postgres(c) = conn {
        diesel::sql_query("VACUUM ANALYZE")
            .execute(&mut **c)
            .expect("VACUUM ANALYZE failed");
    }

    (compare_runs[0], compare_runs[1])
}

fn insert_logs(conn: &mut Conn, rows: &[NewLogEntryRow]) {
    transaction(conn, |conn| {
        match conn {
            Conn::Sqlite(c) => {
                for row in rows {
                    diesel::insert_into(log_entries::table)
                        .values(row)
                        .execute(&mut **c)?;
                }
            }
            Conn::Postgres(c) => {
                for chunk in rows.chunks(POSTGRES_LOG_CHUNK) {
                    diesel::insert_into(log_entries::table)
                        .values(chunk)
                        .execute(&mut **c)?;
                }
            }
        }
        Ok(())
    })
    .expect("bulk log insert failed");
}

/// Latencies of one scenario and its wall time.
struct Outcome {
    scenario: String,
    latencies: Vec<Duration>,
    elapsed: Duration,
    target: String,
    note: String,
    /// Largest server `VmRSS` sampled during the scenario, in KiB.
    peak_rss_kib: u64,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs `clients` tasks at once; each makes its calls in a loop and returns
/// the latency of every call.
async fn run_clients<F, Fut>(clients: usize, call: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let (per_client, elapsed) = run_clients_apart(clients, call).await;
    (per_client.into_iter().flatten().collect(), elapsed)
}

/// Like `run_clients`, but keeps each client's latencies apart.
async fn run_clients_apart<F, Fut>(clients: usize, call: F) -> (Vec<Vec<Duration>>, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|client| tokio::spawn(call(client)))
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.push(handle.await.expect("a client task failed"));
    }
    (latencies, started.elapsed())
}

/// Opens connections to the server under test. Each client of a scenario
/// opens its own, as separate crews and people do, so that no client's
/// calls wait behind another's messages on a shared HTTP/2 connection.
#[derive(Clone)]
struct Connector {
    url: String,
}

impl Connector {
    async fn connect(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .expect("valid server URL")
            .connect()
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", self.url))
    }
}

/// Returns a deterministic pseudo-random index below `len` for `seed`.
fn pick(seed: usize, len: usize) -> usize {
    (seed.wrapping_mul(0x9E37_79B9).wrapping_add(seed >> 3)) % len.max(1)
}

/// 64 clients each create 20 runs and record 100 findings in each. Without
/// `rate` each client sends its next call as soon as the last one returns,
/// which measures how many calls the server completes at most. With `rate`
/// (calls a second over all clients) each client starts a run on a fixed
/// schedule. CreateCrewOutput is timed from the run's scheduled start, so
/// a run that waits for the previous run of its client counts that wait
/// too, and RecordFindings follows it at once.
async fn write_scenario(
    server: &Connector,
    dataset: &Arc<Dataset>,
    rate: Option<usize>,
) -> Outcome {
    const CLIENTS: usize = 64;
    const RUNS_PER_CLIENT: usize = 20;
    // Each run is two calls, so a client starts a run every `period`.
    let period = rate.map(|rate| Duration::from_secs_f64(2.0 * CLIENTS as f64 / rate as f64));
    let begin = Instant::now();
    let (latencies, elapsed) = run_clients(CLIENTS, |client| {
        let server = server.clone();
        let dataset = Arc::clone(dataset);
        async move {
            let channel = server.connect().await;
            let mut crew = CrewServiceClient::new(channel.clone());
            let mut analysis = AnalysisServiceClient::new(channel);
            let mut latencies = Vec::new();
            for round in 0..RUNS_PER_CLIENT {
                let started = match period {
                    None => Instant::now(),
                    Some(period) => {
                        // Clients start their schedules spread over one period.
                        let scheduled =
                            begin + period.mul_f64(round as f64 + client as f64 / CLIENTS as f64);
                        tokio::time::sleep_until(scheduled.into()).await;
                        scheduled
                    }
                };
                let run = crew
                    .create_crew_output(pb::CreateCrewOutputRequest {
                        crew_name: format!("bench-writer-{}", client % CREWS),
                        output_type: "code_review".to_string(),
                        status: pb::CrewOutputStatus::Running as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("CreateCrewOutput failed")
                    .into_inner();
                latencies.push(started.elapsed());
                let findings = (0..100)
                    .map(|index| {
                        let path = &dataset.file_paths[pick(
                            client * 1_000 + round * 100 + index,
                            dataset.file_paths.len(),
                        )];
                        pb::NewFinding {
                            file_path: path.clone(),
                            rule_id: dataset.rule_ids[index % dataset.rule_ids.len()].clone(),
                            message: format!("benchmark finding {index}"),
                            priority: pb::Priority::Medium as i32,
                            range: Some(pb::TextRange {
                                start_line: index as i32 + 1,
                                end_line: index as i32 + 1,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }
                    })
                    .collect();
                let started = Instant::now();
                analysis
                    .record_findings(pb::RecordFindingsRequest {
                        crew_output_id: run.id,
                        findings,
                    })
                    .await
                    .expect("RecordFindings failed");
                latencies.push(started.elapsed());
            }
            latencies
        }
    })
    .await;
    let (scenario, target) = match rate {
        None => (
            "CreateCrewOutput + RecordFindings(100), 64 clients, unpaced".to_string(),
            "capacity",
        ),
        Some(rate) => (
            format!("CreateCrewOutput + RecordFindings(100), 64 clients, paced to {rate} calls/s"),
            "p99 < 10 ms",
        ),
    };
    Outcome {
        scenario,
        latencies,
        elapsed,
        target: target.to_string(),
        note: String::new(),
        peak_rss_kib: 0,
    }
}

async fn history_scenario(server: &Connector, dataset: &Arc<Dataset>, clients: usize) -> Outcome {
    const FILES_PER_CLIENT: usize = 60;
    let (latencies, elapsed) = run_clients(clients, |client| {
        let server = server.clone();
        let dataset = Arc::clone(dataset);
        async move {
            let mut analysis = AnalysisServiceClient::new(server.connect().await);
            let mut latencies = Vec::new();
            for round in 0..FILES_PER_CLIENT {
                let path =
                    &dataset.file_paths[pick(client * 7_919 + round, dataset.file_paths.len())];
                let mut token = String::new();
                // The first page and two more.
                for _ in 0..3 {
                    let started = Instant::now();
                    let page = analysis
                        .get_file_history(pb::GetFileHistoryRequest {
                            file_path: path.clone(),
                            page_size: 0,
                            page_token: token.clone(),
                        })
                        .await
                        .expect("GetFileHistory failed")
                        .into_inner();
                    latencies.push(started.elapsed());
                    token = page.next_page_token;
                    if token.is_empty() {
                        break;
                    }
                }
            }
            latencies
        }
    })
    .await;
    Outcome {
        scenario: format!("GetFileHistory, 3 pages of 100, {clients} clients"),
        latencies,
        elapsed,
        target: "p99 < 20 ms".to_string(),
        note: String::new(),
        peak_rss_kib: 0,
    }
}

async fn list_findings_scenario(
    server: &Connector,
    dataset: &Arc<Dataset>,
    clients: usize,
) -> Vec<Outcome> {
    const PAGES_PER_CLIENT: usize = 150;
    let (per_client, elapsed) = run_clients_apart(clients, |client| {
        let server = server.clone();
        let dataset = Arc::clone(dataset);
        async move {
            let mut analysis = AnalysisServiceClient::new(server.connect().await);
            let rule = dataset.rule_ids[pick(client, dataset.rule_ids.len())].clone();
            // Each client follows one filter's page tokens as deep as it can.
            let request = match client % 4 {
                0 => pb::ListFindingsRequest {
                    crew_output_id: dataset.compare_runs.1,
                    ..Default::default()
                },
                1 => pb::ListFindingsRequest {
                    rule_id: rule,
                    ..Default::default()
                },
                2 => pb::ListFindingsRequest {
                    crew_output_id: dataset.compare_runs.0,
                    min_priority: pb::Priority::High as i32,
                    ..Default::default()
                },
                _ => pb::ListFindingsRequest {
                    file_path_prefix: "lib/crewai/src/crewai/".to_string(),
                    ..Default::default()
                },
            };
            let mut latencies = Vec::new();
            let mut token = String::new();
            for _ in 0..PAGES_PER_CLIENT {
                let started = Instant::now();
                let page = analysis
                    .list_findings(pb::ListFindingsRequest {
                        page_size: 100,
                        page_token: token.clone(),
                        ..request.clone()
                    })
                    .await
                    .expect("ListFindings failed")
                    .into_inner();
                latencies.push(started.elapsed());
                token = page.next_page_token;
                if token.is_empty() {
                    token = String::new();
                }
            }
            latencies
        }
    })
    .await;
    let filters = ["run", "rule", "run + min priority", "path prefix"];
    filters
        .iter()
        .enumerate()
        .map(|(kind, filter)| Outcome {
            scenario: format!("ListFindings by {filter}, 150 pages deep"),
            latencies: per_client
                .iter()
                .skip(kind)
                .step_by(4)
                .flatten()
                .copied()
                .collect(),
            elapsed,
            target: "p99 < 20 ms".to_string(),
            note: format!("{clients} clients over 4 filters"),
            peak_rss_kib: 0,
        })
        .collect()
}

async fn query_logs_scenario(
    server: &Connector,
    dataset: &Arc<Dataset>,
    clients: usize,
) -> Outcome {
    const QUERIES_PER_CLIENT: usize = 60;
    let span = (dataset.log_end_micros - LOG_START_MICROS).max(1);
    let (latencies, elapsed) = run_clients(clients, |client| {
        let server = server.clone();
        let dataset = Arc::clone(dataset);
        async move {
            let mut logs = LogServiceClient::new(server.connect().await);
            let mut latencies = Vec::new();
            for round in 0..QUERIES_PER_CLIENT {
                let seed = client * 104_729 + round;
                let crew = dataset.log_crews[pick(seed, dataset.log_crews.len())].clone();
                // A window of an hour (or of the whole span when it is shorter).
                let window = span.min(3_600_000_000);
                let start = LOG_START_MICROS + (pick(seed, 1_000) as i64 * (span - window) / 1_000);
                let mut token = String::new();
                for _ in 0..2 {
                    let started = Instant::now();
                    let page = logs
                        .query_logs(pb::QueryLogsRequest {
                            page_size: 0,
                            page_token: token.clone(),
                            start_time: Some(micros_to_timestamp(start)),
                            end_time: Some(micros_to_timestamp(start + window)),
                            min_level: "warn".to_string(),
                            crew_name: crew.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("QueryLogs failed")
                        .into_inner();
                    latencies.push(started.elapsed());
                    token = page.next_page_token;
                    if token.is_empty() {
                        break;
                    }
                }
            }
            latencies
        }
    })
    .await;
    Outcome {
        scenario: format!("QueryLogs crew + level + 1 h, 2 pages, {clients} clients"),
        latencies,
        elapsed,
        target: "p99 < 20 ms".to_string(),
        note: String::new(),
        peak_rss_kib: 0,
    }
}

async fn compare_scenario(server: &Connector, dataset: &Arc<Dataset>) -> Outcome {
    let mut analysis = AnalysisServiceClient::new(server.connect().await);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut counts = String::new();
    for _ in 0..5 {
        let call_started = Instant::now();
        let compared = analysis
            .compare_runs(pb::CompareRunsRequest {
                base_crew_output_id: dataset.compare_runs.0,
                head_crew_output_id: dataset.compare_runs.1,
                ..Default::default()
            })
            .await
            .expect("CompareRuns failed")
            .into_inner();
        latencies.push(call_started.elapsed());
        counts = format!(
            "new {}, persisting {}, resolved {}",
            compared.new_count, compared.persisting_count, compared.resolved_count
        );
    }
    Outcome {
        scenario: "CompareRuns, two runs of 100,000 findings".to_string(),
        latencies,
        elapsed: started.elapsed(),
        target: "max < 2 s".to_string(),
        note: counts,
        peak_rss_kib: 0,
    }
}

async fn import_scenario(server: &Connector, dataset: &Arc<Dataset>) -> Outcome {
    let mut analysis = AnalysisServiceClient::new(server.connect().await);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut counts = String::new();
    for round in 0..3 {
        let mut messages = vec![pb::ImportSarifRequest {
            payload: Some(pb::import_sarif_request::Payload::Options(
                pb::ImportSarifOptions {
                    crew_name: format!("import-crew-{round}"),
                    source_root: FIXTURE_SOURCE_ROOT.to_string(),
                    output_type: String::new(),
                },
            )),
        }];
        for chunk in dataset.sarif_bytes.chunks(1 << 20) {
            messages.push(pb::ImportSarifRequest {
                payload: Some(pb::import_sarif_request::Payload::Chunk(chunk.to_vec())),
            });
        }
        let call_started = Instant::now();
        let imported = analysis
            .import_sarif(tokio_stream::iter(messages))
            .await
            .expect("ImportSarif failed")
            .into_inner();
        latencies.push(call_started.elapsed());
        counts = format!(
            "{} findings, {} fixes",
            imported.finding_count, imported.fix_count
        );
    }
    Outcome {
        scenario: "ImportSarif, 21,197-result fixture (gzip)".to_string(),
        latencies,
        elapsed: started.elapsed(),
        target: "max < 2 s".to_string(),
        note: counts,
        peak_rss_kib: 0,
    }
}

/// Streams `count` entries starting at `first` in messages of 1,000.
async fn stream_entries(
    server: Connector,
    lines: Arc<Vec<LogLine>>,
    prefix: String,
    first: usize,
    count: usize,
) -> Duration {
    let mut logs = LogServiceClient::new(server.connect().await);
    let messages: Vec<pb::IngestLogsRequest> = (first..first + count)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|chunk| pb::IngestLogsRequest {
            entries: chunk
                .iter()
                .map(|&n| {
                    let line = &lines[n % lines.len()];
                    pb::NewLogEntry {
                        entry_id: format!("{prefix}:{n}"),
                        timestamp: Some(micros_to_timestamp(
                            LOG_START_MICROS + n as i64 * LOG_SPACING_MICROS,
                        )),
                        level: line.level.clone(),
                        message: line.message.clone(),
                        crew_name: log_crew(line, n),
                        ..Default::default()
                    }
                })
                .collect(),
        })
        .collect();
    let started = Instant::now();
    let response = logs
        .ingest_logs(tokio_stream::iter(messages))
        .await
        .expect("IngestLogs failed")
        .into_inner();
    assert_eq!(
        response.accepted_count as usize, count,
        "every entry is stored"
    );
    started.elapsed()
}

async fn ingest_scenarios(server: &Connector, dataset: &Arc<Dataset>, rows: usize) -> Vec<Outcome> {
    let lines = Arc::new(fixture_log_lines());
    // Entry ids differ from run to run, so a run on a reused database
    // stores its entries instead of finding them duplicates.
    let run = std::process::id();
    let single = stream_entries(
        server.clone(),
        Arc::clone(&lines),
        format!("single-{run}"),
        0,
        rows,
    )
    .await;
    let single_rate = rows as f64 / single.as_secs_f64();

    const STREAMS: usize = 32;
    const READS_PER_SECOND: u32 = 50;
    let per_stream = rows / STREAMS;
    let started = Instant::now();
    let handles: Vec<_> = (0..STREAMS)
        .map(|stream| {
            tokio::spawn(stream_entries(
                server.clone(),
                Arc::clone(&lines),
                format!("multi-{run}"),
                stream * per_stream,
                per_stream,
            ))
        })
        .collect();
    // One reader reads file history while the streams write, to show
    // whether writes starve reads. It reads READS_PER_SECOND files a second,
    // as a person or a dashboard would, so its own load leaves the streams
    // their share of the two cores. It runs on its own thread and runtime,
    // because on the bench's runtime its responses waited behind the
    // streams' encoding.
    let streaming = Arc::new(AtomicBool::new(true));
    let reader = {
        let streaming = Arc::clone(&streaming);
        let dataset = Arc::clone(dataset);
        let server = server.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the reader's runtime");
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut analysis = AnalysisServiceClient::new(server.connect().await);
                let mut latencies = Vec::new();
                let mut round = 0;
                let mut ticks = tokio::time::interval(Duration::from_secs(1) / READS_PER_SECOND);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while streaming.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let path = &dataset.file_paths[pick(round, dataset.file_paths.len())];
                    let started = Instant::now();
                    analysis
                        .get_file_history(pb::GetFileHistoryRequest {
                            file_path: path.clone(),
                            page_size: 0,
                            page_token: String::new(),
                        })
                        .await
                        .expect("GetFileHistory failed");
                    latencies.push(started.elapsed());
                    round += 1;
                }
                latencies
            })
        })
    };
    let mut durations = Vec::new();
    for handle in handles {
        durations.push(handle.await.expect("stream task failed"));
    }
    let elapsed = started.elapsed();
    streaming.store(false, Ordering::Relaxed);
    let reads = tokio::task::spawn_blocking(move || reader.join())
        .await
        .expect("reader thread failed")
        .expect("reader thread panicked");
    let total_rate = (per_stream * STREAMS) as f64 / elapsed.as_secs_f64();
    let rates: Vec<f64> = durations
        .iter()
        .map(|duration| per_stream as f64 / duration.as_secs_f64())
        .collect();
    let min_rate = rates.iter().copied().fold(f64::MAX, f64::min);
    let max_rate = rates.iter().copied().fold(0.0, f64::max);
    vec![
        Outcome {
            scenario: format!("IngestLogs, 1 stream of {rows}"),
            latencies: vec![single],
            elapsed: single,
            target: "ceiling".to_string(),
            note: format!("{single_rate:.0} entries/s"),
            peak_rss_kib: 0,
        },
        Outcome {
            scenario: format!("IngestLogs, 32 streams of {per_stream}"),
            latencies: durations,
            elapsed,
            target: "total >= 65% of 1 stream".to_string(),
            note: format!(
                "{total_rate:.0} entries/s = {:.0}% of 1 stream; per stream {min_rate:.0} to {max_rate:.0}/s",
                total_rate * 100.0 / single_rate
            ),
            peak_rss_kib: 0,
        },
        Outcome {
            scenario: "GetFileHistory, 1 client, during the 32 streams".to_string(),
            latencies: reads,
            elapsed,
            target: "p99 < 20 ms".to_string(),
            note: "reads while writes stream".to_string(),
            peak_rss_kib: 0,
        },
    ]
}

/// Reads one `kB` field, such as `VmHWM`, of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_outcomes(backend: &str, outcomes: &[Outcome]) {
    println!(
        "| backend | scenario | calls | calls/s | p50 ms | p99 ms | max ms | peak RSS MiB | target | note |\n|---|---|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for outcome in outcomes {
        let mut sorted = outcome.latencies.clone();
        sorted.sort();
        println!(
            "| {backend} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            outcome.scenario,
            sorted.len(),
            sorted.len() as f64 / outcome.elapsed.as_secs_f64(),
            millis(percentile(&sorted, 0.50)),
            millis(percentile(&sorted, 0.99)),
            millis(percentile(&sorted, 1.0)),
            outcome.peak_rss_kib as f64 / 1024.0,
            outcome.target,
            outcome.note,
        );
    }
}

/// A PostgreSQL database for one run, dropped afterwards unless `keep`.
struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
    keep: bool,
}

impl PostgresDatabase {
    fn create() -> Result<PostgresDatabase, String> {
        let admin_url = std::env::var("CODE_ANALYZER_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let mut admin =
            diesel::PgConnection::establish(&admin_url).map_err(|error| error.to_string())?;
        let name = format!("ca_bench_scale_{}", std::process::id());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .map_err(|error| error.to_string())?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Ok(PostgresDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
            keep: false,
        })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(mut admin) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

fn server_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/code-analyzer");
    assert!(
        binary.is_file(),
        "{} not found; run `cargo build --release` first",
        binary.display()
    );
    binary
}

async fn run_backend(backend: &str, options: &Options) {
    let folder = tempfile::TempDir::new().expect("cannot create a temporary folder");
    let mut postgres = None;
    let url = match (backend, &options.reuse) {
        (_, Some(url)) => url.clone(),
        ("sqlite", None) => format!("sqlite://{}", folder.path().join("scale.db").display()),
        _ => match PostgresDatabase::create() {
            Ok(database) => {
                let url = database.url.clone();
                postgres = Some(database);
                url
            }
            Err(error) => {
                println!("postgres: skipped, PostgreSQL is not reachable ({error})");
                return;
            }
        },
    };
    let load = options.reuse.is_none();
    if load {
        println!(
            "{backend}: loading {} findings and {} log entries",
            options.findings, options.logs
        );
    }
    let load_url = url.clone();
    let (findings_total, logs_total) = (options.findings, options.logs);
    let dataset =
        tokio::task::spawn_blocking(move || bulk_load(&load_url, findings_total, logs_total, load))
            .await
            .expect("bulk load failed");
    let dataset = Arc::new(dataset);

    let server = ServeProcess::start_binary(&server_binary(), &url, &[]);
    let pid = server.pid();
    let connector = Connector { url: server.url() };
    // Samples the server's resident memory while the scenarios run; each
    // scenario takes the largest sample since the one before it.
    let sampling = Arc::new(AtomicBool::new(true));
    let scenario_peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let scenario_peak = Arc::clone(&scenario_peak);
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                let rss = status_kib(pid, "VmRSS").unwrap_or(0);
                peak = peak.max(rss);
                scenario_peak.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };

    let mut outcomes = Vec::new();
    let mut record = |mut batch: Vec<Outcome>| {
        let peak = scenario_peak.swap(0, Ordering::Relaxed);
        for outcome in &mut batch {
            outcome.peak_rss_kib = peak;
        }
        outcomes.extend(batch);
    };
    if options.runs("history") {
        record(vec![
            history_scenario(&connector, &dataset, options.clients).await,
        ]);
    }
    if options.runs("list") {
        record(list_findings_scenario(&connector, &dataset, options.clients).await);
    }
    if options.runs("logs") {
        record(vec![
            query_logs_scenario(&connector, &dataset, options.clients).await,
        ]);
    }
    if options.runs("compare") {
        record(vec![compare_scenario(&connector, &dataset).await]);
    }
    if options.runs("import") {
        record(vec![import_scenario(&connector, &dataset).await]);
    }
    if options.runs("writes") {
        record(vec![write_scenario(&connector, &dataset, None).await]);
        for &rate in &options.write_rates {
            record(vec![write_scenario(&connector, &dataset, Some(rate)).await]);
        }
    }
    if options.runs("ingest") {
        record(ingest_scenarios(&connector, &dataset, options.ingest_rows).await);
    }

    sampling.store(false, Ordering::Relaxed);
    let sampled_kib = sampler.join().unwrap_or(0);
    let high_water_kib = status_kib(pid, "VmHWM").unwrap_or(0);
    print_outcomes(backend, &outcomes);
    println!(
        "{backend}: server peak memory {:.1} MiB (VmHWM {:.1} MiB, largest VmRSS sample {:.1} MiB); target < 200 MiB",
        high_water_kib.max(sampled_kib) as f64 / 1024.0,
        high_water_kib as f64 / 1024.0,
        sampled_kib as f64 / 1024.0
    );
    drop(server);
    if options.keep {
        match postgres.as_mut() {
            Some(database) => database.keep = true,
            None => {
                let _kept_path = folder.keep();
            }
        }
        println!("{backend}: the database is kept at {url}");
    }
    drop(postgres);
}

#[tokio::main]
async fn main() {
    let options = parse_options();
    for backend in options.backends.clone() {
        run_backend(backend, &options).await;
    }
}
