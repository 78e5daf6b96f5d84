//! The client subcommands `compare`, `export-sarif` and `draft-pr` against
//! a served `code-analyzer` process, on both backends.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::process::ServeProcess;
use common::{Backend, FIXTURE_SOURCE_ROOT, SMALL_SARIF, SMALL_SARIF_AGENT_PATH, TestDatabase};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_code-analyzer");

/// A served process on a fresh database, with the folder for its files.
struct Served {
    process: ServeProcess,
    folder: tempfile::TempDir,
    /// Dropped after the process.
    _database: TestDatabase,
}

impl Served {
    /// Starts a server on a fresh database of `backend`, or returns `None`
    /// after printing why the test is skipped.
    fn start(backend: Backend) -> Option<Served> {
        let database = TestDatabase::create(backend)?;
        let process = ServeProcess::start(database.url(), &["--shutdown-grace", "1"]);
        Some(Served {
            process,
            folder: tempfile::TempDir::new().unwrap(),
            _database: database,
        })
    }

    /// Runs a client subcommand against this server.
    fn run(&self, args: &[&str]) -> Output {
        let url = self.process.url();
        let output = Command::new(BINARY)
            .args(args)
            .args(["--server", &url])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run code-analyzer");
        assert!(
            output.status.success(),
            "code-analyzer {args:?} failed with {}; stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs a client subcommand with `--json` and parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let output = self.run(&full);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "output of {full:?} is not JSON ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    fn path(&self, name: &str) -> String {
        path_text(&self.folder.path().join(name)).to_string()
    }

    /// Imports SMALL_SARIF and returns the crew output id of its ruff run.
    fn import_small_log(&self) -> i64 {
        let log = self.path("small.sarif");
        std::fs::write(&log, SMALL_SARIF).unwrap();
        let summary = self.json(&["import-sarif", &log, "--source-root", FIXTURE_SOURCE_ROOT]);
        summary["runs"][0]["crew_output_id"].as_i64().unwrap()
    }
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("path is not UTF-8")
}

fn compare_prints_counts_as_json(served: Served) {
    let base = served.import_small_log();
    let head = served.import_small_log();

    let summary = served.json(&["compare", &base.to_string(), &head.to_string()]);
    assert_eq!(summary["new_count"], 0);
    assert_eq!(summary["persisting_count"], 3);
    assert_eq!(summary["resolved_count"], 0);
    assert!(summary["results_diff"]["changed"].is_array());
    assert!(
        summary.get("findings").is_none(),
        "findings only with --list"
    );

    let listed = served.json(&[
        "compare",
        &base.to_string(),
        &head.to_string(),
        "--list",
        "--rule",
        "F401",
    ]);
    assert_eq!(listed["persisting_count"], 2);
    let findings = listed["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2);
    assert_eq!(findings[0]["change"], "PERSISTING");
    assert_eq!(findings[0]["file_path"], SMALL_SARIF_AGENT_PATH);

    let high = served.json(&[
        "compare",
        &base.to_string(),
        &head.to_string(),
        "--min-priority",
        "critical",
    ]);
    assert_eq!(
        high["persisting_count"], 0,
        "every small-log finding is below CRITICAL"
    );
    let persisting = served.json(&[
        "compare",
        &base.to_string(),
        &head.to_string(),
        "--list",
        "--change",
        "persisting",
        "--min-priority",
        "high",
    ]);
    let listed_rules: Vec<&str> = persisting["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|finding| finding["rule_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_rules, ["F401", "F401"], "E501 is a note, so LOW");
    assert_eq!(persisting["new_count"], 0);
    assert_eq!(persisting["persisting_count"], 2);

    let text = served.run(&[
        "compare",
        &base.to_string(),
        &head.to_string(),
        "--path-prefix",
        "lib/crewai/my tools/",
    ]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with(&format!(
            "Run {head} against run {base}: 0 new, 1 persisting, 0 resolved findings."
        )),
        "{text}"
    );
}

fn export_sarif_file_imports_back(served: Served) {
    let run = served.import_small_log();
    let file = served.path("export.sarif");

    let summary = served.json(&["export-sarif", &run.to_string(), "-o", &file]);
    assert_eq!(summary["crew_output_id"], run);
    let written = std::fs::read(&file).unwrap();
    assert_eq!(summary["bytes"], written.len());
    assert!(!Path::new(&format!("{file}.partial")).exists());

    let imported = served.json(&["import-sarif", &file]);
    assert_eq!(imported["finding_count"], 3);
    assert_eq!(imported["fix_count"], 2);
    assert_eq!(imported["runs"][0]["tool_name"], "ruff");

    let stdout = served.run(&["export-sarif", &run.to_string()]).stdout;
    let log: Value = serde_json::from_slice(&stdout).expect("stdout is not JSON");
    assert_eq!(log["version"], "2.1.0");
    assert_eq!(log["runs"][0]["results"].as_array().unwrap().len(), 3);
}

fn draft_pr_prints_markdown(served: Served) {
    let run = served.import_small_log();

    let text = String::from_utf8(served.run(&["draft-pr", &run.to_string()]).stdout).unwrap();
    assert!(
        text.starts_with("# Fix 3 findings of ruff in 2 files\n"),
        "{text}"
    );
    assert!(text.contains("| HIGH | F401 | 2 | 2 |"), "{text}");
    assert!(
        text.contains(&format!("--- a/{SMALL_SARIF_AGENT_PATH}\n")),
        "{text}"
    );

    let draft = served.json(&[
        "draft-pr",
        &run.to_string(),
        "--path-prefix",
        SMALL_SARIF_AGENT_PATH,
    ]);
    assert_eq!(draft["title"], "Fix 2 findings of ruff in 1 file");
    assert!(draft["body"].as_str().unwrap().contains("## Fixes"));
    assert!(draft["fix_id"].as_i64().unwrap() > 0);
    assert_eq!(draft["file_path"], SMALL_SARIF_AGENT_PATH);
}

process_backend_tests! {
    Served::start;
    compare_prints_counts_as_json,
    export_sarif_file_imports_back,
    draft_pr_prints_markdown,
}
