//! TailLogs: live followers with filters, stored entries from a start time
//! followed by live ones, several followers, a slow follower that falls
//! behind, input checks, shutdown, and the `code-analyzer tail` command.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use code_analyzer::pb;
use code_analyzer::pb::log_service_client::LogServiceClient;
use code_analyzer::pb::tail_logs_response::Event;
use code_analyzer::server::ServerOptions;
use common::process::ServeProcess;
use common::{TestServer, assert_status, expect_error, log_entry, test_options, time};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

const BINARY: &str = env!("CARGO_BIN_EXE_code-analyzer");

/// Maximum wait for one event that the test expects.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Tail buffer of the slow-follower test, far below what it ingests.
const SMALL_TAIL_BUFFER: usize = 16;

fn entry(entry_id: &str, level: &str, message: &str, crew_name: &str) -> pb::NewLogEntry {
    pb::NewLogEntry {
        crew_name: crew_name.to_string(),
        ..log_entry(entry_id, level, message)
    }
}

fn at(mut entry: pb::NewLogEntry, seconds: i64) -> pb::NewLogEntry {
    entry.timestamp = Some(time(seconds));
    entry
}

async fn follow(
    logs: &mut LogServiceClient<Channel>,
    request: pb::TailLogsRequest,
) -> Streaming<pb::TailLogsResponse> {
    logs.tail_logs(request)
        .await
        .expect("TailLogs failed")
        .into_inner()
}

/// Returns the next event of a stream, failing on an error, the end of the
/// stream or a wait longer than `EVENT_TIMEOUT`.
async fn next_event(stream: &mut Streaming<pb::TailLogsResponse>) -> Event {
    let message = tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("no TailLogs event arrived in time");
    match message {
        Ok(Some(response)) => response.event.expect("a response without an event"),
        Ok(None) => panic!("the TailLogs stream ended"),
        Err(status) => panic!("the TailLogs stream failed: {status:?}"),
    }
}

/// Returns the next entry of a stream. A FellBehind event fails the test.
async fn next_entry(stream: &mut Streaming<pb::TailLogsResponse>) -> pb::LogEntry {
    match next_event(stream).await {
        Event::Entry(entry) => entry,
        Event::FellBehind(behind) => panic!("unexpected FellBehind: {behind:?}"),
    }
}

/// Reads entries up to and including the one with `entry_id`, and returns
/// the entry ids read, in order.
async fn entry_ids_until(
    stream: &mut Streaming<pb::TailLogsResponse>,
    entry_id: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let entry = next_entry(stream).await;
        ids.push(entry.entry_id.clone());
        if entry.entry_id == entry_id {
            return ids;
        }
    }
}

async fn ingest(server: &mut TestServer, entries: Vec<pb::NewLogEntry>) {
    let count = entries.len() as i64;
    let response = server
        .ingest(vec![entries])
        .await
        .expect("IngestLogs failed");
    assert_eq!(response.accepted_count, count, "{response:?}");
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

async fn follower_receives_filtered_entries(mut server: TestServer) {
    let run = server.create_crew_output("crew-a").await;
    let mut logs = server.logs.clone();
    let mut by_crew = follow(
        &mut logs,
        pb::TailLogsRequest {
            crew_name: "crew-a".to_string(),
            ..Default::default()
        },
    )
    .await;
    let mut by_level = follow(
        &mut logs,
        pb::TailLogsRequest {
            min_level: "warning".to_string(),
            ..Default::default()
        },
    )
    .await;
    let mut by_message = follow(
        &mut logs,
        pb::TailLogsRequest {
            message_contains: "disk".to_string(),
            ..Default::default()
        },
    )
    .await;
    let mut by_run = follow(
        &mut logs,
        pb::TailLogsRequest {
            crew_output_id: run.id,
            ..Default::default()
        },
    )
    .await;

    let mut in_run = entry("a3", "info", "run step", "crew-a");
    in_run.crew_output_id = run.id;
    ingest(
        &mut server,
        vec![
            entry("a1", "info", "started", "crew-a"),
            entry("a2", "warning", "disk full", "crew-a"),
            entry("b1", "ERROR", "disk error", "crew-b"),
            entry("b2", "debug", "idle", "crew-b"),
            in_run,
        ],
    )
    .await;
    let mut marker = entry("marker", "error", "disk marker", "crew-a");
    marker.crew_output_id = run.id;
    ingest(&mut server, vec![marker]).await;

    assert_eq!(
        entry_ids_until(&mut by_crew, "marker").await,
        strings(&["a1", "a2", "a3", "marker"])
    );
    assert_eq!(
        entry_ids_until(&mut by_level, "marker").await,
        strings(&["a2", "b1", "marker"])
    );
    assert_eq!(
        entry_ids_until(&mut by_message, "marker").await,
        strings(&["a2", "b1", "marker"])
    );
    assert_eq!(
        entry_ids_until(&mut by_run, "marker").await,
        strings(&["a3", "marker"])
    );
}

async fn live_entry_has_stored_fields(mut server: TestServer) {
    let mut logs = server.logs.clone();
    let mut follower = follow(&mut logs, pb::TailLogsRequest::default()).await;

    let mut sent = at(entry("f1", "notice", "found 2 problems", "crew-a"), 30);
    sent.metadata = Some(common::to_struct(serde_json::json!({"attempt": 2})));
    ingest(&mut server, vec![sent]).await;

    let received = next_entry(&mut follower).await;
    let stored = server
        .logs
        .query_logs(pb::QueryLogsRequest::default())
        .await
        .expect("QueryLogs failed")
        .into_inner()
        .entries;
    assert_eq!(stored.len(), 1);
    assert_eq!(received, stored[0]);
    assert!(received.id > 0);
    assert_eq!(received.level, "notice");
    assert_eq!(received.severity_number, 10, "syslog notice is INFO2");
    assert_eq!(received.timestamp, Some(time(30)));
}

async fn duplicates_are_not_sent_again(mut server: TestServer) {
    let mut logs = server.logs.clone();
    let mut follower = follow(&mut logs, pb::TailLogsRequest::default()).await;

    ingest(
        &mut server,
        vec![
            entry("d1", "info", "one", "crew-a"),
            entry("d2", "info", "two", "crew-a"),
        ],
    )
    .await;
    let response = server
        .ingest(vec![vec![
            entry("d1", "info", "one", "crew-a"),
            entry("d3", "info", "three", "crew-a"),
            entry("d2", "info", "two", "crew-a"),
        ]])
        .await
        .expect("IngestLogs failed");
    assert_eq!(response.accepted_count, 1);
    assert_eq!(response.duplicate_count, 2);
    ingest(&mut server, vec![entry("marker", "info", "last", "crew-a")]).await;

    assert_eq!(
        entry_ids_until(&mut follower, "marker").await,
        strings(&["d1", "d2", "d3", "marker"])
    );
}

async fn start_time_sends_stored_then_live(mut server: TestServer) {
    // Three pages of stored entries, and one before the start time.
    let stored: Vec<pb::NewLogEntry> = (1..=1_200)
        .map(|index| {
            at(
                entry(&format!("old-{index}"), "info", "old", "crew-a"),
                index,
            )
        })
        .collect();
    let stored_ids: Vec<String> = stored.iter().map(|entry| entry.entry_id.clone()).collect();
    ingest(&mut server, stored).await;
    ingest(
        &mut server,
        vec![at(entry("too-old", "info", "old", "crew-a"), -100)],
    )
    .await;

    let mut logs = server.logs.clone();
    let mut follower = follow(
        &mut logs,
        pb::TailLogsRequest {
            start_time: Some(time(0)),
            ..Default::default()
        },
    )
    .await;

    // Entries stored while the follower reads the stored ones: some are in
    // its snapshots, the rest arrive live, and each must arrive once.
    let mut writer = server.logs.clone();
    let concurrent = tokio::spawn(async move {
        for call in 0..3 {
            let entries: Vec<pb::NewLogEntry> = (0..100)
                .map(|index| {
                    let number = call * 100 + index;
                    at(
                        entry(&format!("new-{number}"), "info", "new", "crew-a"),
                        5_000 + number,
                    )
                })
                .collect();
            let requests = vec![pb::IngestLogsRequest { entries }];
            writer
                .ingest_logs(tokio_stream::iter(requests))
                .await
                .expect("IngestLogs failed");
        }
    });

    let mut received: Vec<String> = Vec::new();
    while received.len() < 1_500 {
        received.push(next_entry(&mut follower).await.entry_id);
    }
    concurrent.await.expect("the concurrent ingest panicked");
    ingest(
        &mut server,
        vec![at(entry("marker", "info", "last", "crew-a"), 9_000)],
    )
    .await;
    received.extend(entry_ids_until(&mut follower, "marker").await);

    assert_eq!(received[..1_200], stored_ids[..], "stored entries in order");
    let distinct: HashSet<&String> = received.iter().collect();
    assert_eq!(distinct.len(), received.len(), "an entry arrived twice");
    assert_eq!(received.len(), 1_501);
    assert!(!received.contains(&"too-old".to_string()));
    for number in 0..300 {
        assert!(received.contains(&format!("new-{number}")), "new-{number}");
    }
}

async fn start_time_with_interleaved_writes_sends_each_once(mut server: TestServer) {
    let stored: Vec<pb::NewLogEntry> = (1..=1_500)
        .map(|index| {
            at(
                entry(&format!("old-{index}"), "info", "old", "crew-a"),
                index,
            )
        })
        .collect();
    ingest(&mut server, stored).await;

    let mut logs = server.logs.clone();
    let mut follower = follow(
        &mut logs,
        pb::TailLogsRequest {
            start_time: Some(time(0)),
            ..Default::default()
        },
    )
    .await;

    // Timestamps spread over the whole stored range, so concurrent entries
    // fall into pages already sent, the page being read and pages to come.
    let mut writer = server.logs.clone();
    let concurrent = tokio::spawn(async move {
        for call in 0..10 {
            let entries: Vec<pb::NewLogEntry> = (0..30)
                .map(|index| {
                    let number = call * 30 + index;
                    at(
                        entry(&format!("new-{number}"), "info", "new", "crew-a"),
                        1 + (number * 5) % 1_500,
                    )
                })
                .collect();
            let requests = vec![pb::IngestLogsRequest { entries }];
            writer
                .ingest_logs(tokio_stream::iter(requests))
                .await
                .expect("IngestLogs failed");
        }
    });

    let mut received: Vec<String> = Vec::new();
    while received.len() < 1_800 {
        received.push(next_entry(&mut follower).await.entry_id);
    }
    concurrent.await.expect("the concurrent ingest panicked");
    ingest(
        &mut server,
        vec![at(entry("marker", "info", "last", "crew-a"), 9_000)],
    )
    .await;
    received.extend(entry_ids_until(&mut follower, "marker").await);

    let distinct: HashSet<&String> = received.iter().collect();
    assert_eq!(distinct.len(), received.len(), "an entry arrived twice");
    assert_eq!(received.len(), 1_801);
}

async fn end_time_ends_stream(mut server: TestServer) {
    ingest(
        &mut server,
        vec![
            at(entry("e1", "info", "one", "crew-a"), 5),
            at(entry("e2", "info", "two", "crew-a"), 1),
            at(entry("late", "info", "late", "crew-a"), 20),
        ],
    )
    .await;

    let mut logs = server.logs.clone();
    let mut follower = follow(
        &mut logs,
        pb::TailLogsRequest {
            start_time: Some(time(0)),
            end_time: Some(time(10)),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(next_entry(&mut follower).await.entry_id, "e2");
    assert_eq!(next_entry(&mut follower).await.entry_id, "e1");
    let end = tokio::time::timeout(EVENT_TIMEOUT, follower.message())
        .await
        .expect("the stream did not end in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

async fn three_followers_receive_everything(mut server: TestServer) {
    let mut logs = server.logs.clone();
    let mut followers = Vec::new();
    for _ in 0..3 {
        followers.push(follow(&mut logs, pb::TailLogsRequest::default()).await);
    }

    let mut expected = Vec::new();
    for call in 0..3 {
        let entries: Vec<pb::NewLogEntry> = (0..100)
            .map(|index| entry(&format!("c{call}-{index}"), "info", "step", "crew-a"))
            .collect();
        expected.extend(entries.iter().map(|entry| entry.entry_id.clone()));
        ingest(&mut server, entries).await;
    }

    for follower in &mut followers {
        let mut received = Vec::new();
        while received.len() < expected.len() {
            received.push(next_entry(follower).await.entry_id);
        }
        assert_eq!(received, expected);
    }
}

async fn slow_follower_falls_behind_and_continues(mut server: TestServer) {
    // A connection of its own: entries that the follower leaves unread
    // fill this connection's flow-control window, not the ingest's.
    let channel = Endpoint::from_shared(format!("http://{}", server.address))
        .expect("invalid endpoint")
        .connect()
        .await
        .expect("cannot connect to the test server");
    let mut slow = follow(
        &mut LogServiceClient::new(channel),
        pb::TailLogsRequest::default(),
    )
    .await;

    // 24 MiB of entries: more than HTTP/2 flow control, the server's send
    // buffer, the follower's queue and the tail buffer hold together.
    let text = "x".repeat(8 * 1024);
    for call in 0..6 {
        let entries: Vec<pb::NewLogEntry> = (0..512)
            .map(|index| entry(&format!("bulk-{call}-{index}"), "info", &text, "crew-a"))
            .collect();
        ingest(&mut server, entries).await;
    }

    let missed = loop {
        match next_event(&mut slow).await {
            Event::FellBehind(behind) => break behind.missed_entries,
            Event::Entry(entry) => assert!(entry.entry_id.starts_with("bulk-")),
        }
    };
    assert!(missed > 0, "missed_entries is {missed}");

    ingest(
        &mut server,
        vec![entry("after", "warning", "after the gap", "crew-a")],
    )
    .await;
    loop {
        match next_event(&mut slow).await {
            Event::Entry(entry) if entry.entry_id == "after" => break,
            Event::Entry(entry) => assert!(entry.entry_id.starts_with("bulk-")),
            Event::FellBehind(behind) => assert!(behind.missed_entries > 0),
        }
    }
}

async fn bad_input_is_invalid_argument(server: TestServer) {
    let mut logs = server.logs.clone();

    let status = expect_error(
        logs.tail_logs(pb::TailLogsRequest {
            min_level: "loud".to_string(),
            ..Default::default()
        })
        .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "min_level: \"loud\" is not a known level name",
    );

    let status = expect_error(
        logs.tail_logs(pb::TailLogsRequest {
            start_time: Some(time(600)),
            end_time: Some(time(0)),
            ..Default::default()
        })
        .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "end_time: 2026-01-01T00:00:00Z is not after start_time 2026-01-01T00:10:00Z",
    );

    let status = expect_error(
        logs.tail_logs(pb::TailLogsRequest {
            start_time: Some(time(0)),
            end_time: Some(time(0)),
            ..Default::default()
        })
        .await,
    );
    assert_status(&status, Code::InvalidArgument, "end_time: ");

    let status = expect_error(
        logs.tail_logs(pb::TailLogsRequest {
            crew_output_id: -3,
            ..Default::default()
        })
        .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "crew_output_id: must be a positive id, got -3",
    );
}

/// A `code-analyzer tail` child process whose stdout lines arrive on a
/// channel. Dropping it kills the process.
struct TailProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl TailProcess {
    fn start(server: &TestServer, args: &[&str]) -> TailProcess {
        let mut child = Command::new(BINARY)
            .arg("tail")
            .args(["--server", &format!("http://{}", server.address)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start code-analyzer tail");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        TailProcess { child, lines }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(EVENT_TIMEOUT, self.lines.recv())
            .await
            .expect("tail printed no line in time")
            .expect("tail closed its output")
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for the process to exit.
    async fn interrupt(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -INT failed");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("cannot poll tail") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tail did not exit within 60 s of SIGINT");
    }
}

impl Drop for TailProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn tail_command_prints_entries(mut server: TestServer) {
    ingest(
        &mut server,
        vec![
            at(
                entry("s1", "warning", "retrying tool call", "review-crew"),
                1,
            ),
            at(entry("s2", "info", "other crew", "lint-crew"), 2),
        ],
    )
    .await;

    let mut tail = TailProcess::start(
        &server,
        &["--crew", "review-crew", "--since", "2026-01-01T00:00:00Z"],
    );
    assert_eq!(
        tail.next_line().await,
        "2026-01-01T00:00:01Z  warning  review-crew  retrying tool call"
    );

    // The stored entry is printed after the subscription, so this one
    // arrives live.
    ingest(
        &mut server,
        vec![
            at(entry("l1", "info", "skipped: other crew", "lint-crew"), 3),
            at(entry("l2", "ERROR", "tool failed", "review-crew"), 4),
        ],
    )
    .await;
    assert_eq!(
        tail.next_line().await,
        "2026-01-01T00:00:04Z  ERROR    review-crew  tool failed"
    );

    let status = tail.interrupt().await;
    assert!(status.success(), "tail exited with {status}");
}

async fn tail_command_prints_json_lines(mut server: TestServer) {
    // Without a timestamp the server stamps the entry with its own clock,
    // so `--since 1h` includes it.
    ingest(
        &mut server,
        vec![
            entry("j1", "error", "disk full", "review-crew"),
            entry("j2", "info", "disk ok", "review-crew"),
            entry("j3", "error", "network down", "review-crew"),
        ],
    )
    .await;

    let mut tail = TailProcess::start(
        &server,
        &[
            "--json",
            "--since",
            "1h",
            "--min-level",
            "warning",
            "--contains",
            "disk",
        ],
    );
    let first: serde_json::Value =
        serde_json::from_str(&tail.next_line().await).expect("tail printed no JSON");
    assert_eq!(first["entry_id"], "j1");
    assert_eq!(first["level"], "error");
    assert_eq!(first["message"], "disk full");
    assert_eq!(first["crew_name"], "review-crew");
    assert_eq!(first["severity_number"], 17);

    let mut live = entry("j4", "fatal", "disk gone", "review-crew");
    live.metadata = Some(common::to_struct(serde_json::json!({"device": "sda"})));
    ingest(&mut server, vec![live]).await;
    let second: serde_json::Value =
        serde_json::from_str(&tail.next_line().await).expect("tail printed no JSON");
    assert_eq!(second["entry_id"], "j4");
    assert_eq!(second["metadata"]["device"], "sda");

    let status = tail.interrupt().await;
    assert!(status.success(), "tail exited with {status}");
}

backend_tests!(
    follower_receives_filtered_entries,
    live_entry_has_stored_fields,
    duplicates_are_not_sent_again,
    start_time_sends_stored_then_live,
    start_time_with_interleaved_writes_sends_each_once,
    end_time_ends_stream,
    three_followers_receive_everything,
    #[options(ServerOptions { tail_buffer: SMALL_TAIL_BUFFER, ..test_options() })]
    slow_follower_falls_behind_and_continues,
    bad_input_is_invalid_argument,
    tail_command_prints_entries,
    tail_command_prints_json_lines,
);

/// A follower of a `code-analyzer serve` process gets UNAVAILABLE when the
/// server shuts down, instead of holding the shutdown for the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_followers() {
    let folder = tempfile::TempDir::new().expect("cannot create a temporary folder");
    let url = format!("sqlite://{}", folder.path().join("tail.db").display());
    let mut serve = ServeProcess::start(&url, &["--shutdown-grace", "60"]);
    let mut logs = LogServiceClient::new(serve.channel().await);
    let mut follower = follow(&mut logs, pb::TailLogsRequest::default()).await;

    let stopped = Command::new("kill")
        .args(["-TERM", &serve.pid().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(stopped.success(), "kill -TERM failed");

    let end = tokio::time::timeout(EVENT_TIMEOUT, follower.message())
        .await
        .expect("the stream did not end in time");
    let status = end.expect_err("the stream ended without an error");
    assert_status(
        &status,
        Code::Unavailable,
        "the server is shutting down; call TailLogs again with start_time to resume",
    );

    let mut exit = None;
    for _ in 0..300 {
        exit = serve.try_wait();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = exit.expect("serve did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "serve exited with {exit}");
}
