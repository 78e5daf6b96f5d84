//! Overload and lifecycle. Calls past the concurrency limit are shed with a
//! retry delay, and unary calls meet the default deadline. A flood of log
//! entries is slowed by HTTP/2 flow control instead of filling memory.
//! SIGTERM drains an open stream without losing what it acknowledged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use code_analyzer::pb;
use code_analyzer::pb::log_service_client::LogServiceClient;
use code_analyzer::server::ServerOptions;
use common::process::ServeProcess;
use common::{
    Backend, TestDatabase, TestServer, assert_status, expect_error, hold_write_lock, log_entry,
    test_options,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

fn create_request() -> pb::CreateCrewOutputRequest {
    pb::CreateCrewOutputRequest {
        crew_name: "limited-crew".to_string(),
        output_type: "review".to_string(),
        ..Default::default()
    }
}

/// Opens an IngestLogs stream that stays open until the returned sender is
/// dropped; the task yields the call's result.
fn open_log_stream(
    server: &TestServer,
    name: &str,
) -> (
    mpsc::Sender<pb::IngestLogsRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::IngestLogsResponse>, tonic::Status>>,
) {
    let (sender, receiver) = mpsc::channel(4);
    sender
        .try_send(pb::IngestLogsRequest {
            entries: vec![log_entry(name, "INFO", "holding a place")],
        })
        .unwrap();
    let mut client = server.logs.clone();
    let call = tokio::spawn(async move { client.ingest_logs(ReceiverStream::new(receiver)).await });
    (sender, call)
}

/// Waits until the entry `entry_id` is stored, read straight from the
/// database so that no call takes a place under the limit.
async fn wait_until_stored(server: &TestServer, entry_id: &str) {
    let query = format!(
        "SELECT CAST(count(*) AS TEXT) AS value FROM log_entries WHERE entry_id = '{entry_id}'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.database.query_text(&query) != "1" {
        assert!(Instant::now() < deadline, "{entry_id} was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn calls_past_the_limit_are_shed(mut server: TestServer) {
    // Each stream keeps its place from its first message until it ends.
    let (first, first_call) = open_log_stream(&server, "held-1");
    wait_until_stored(&server, "held-1").await;
    let (second, second_call) = open_log_stream(&server, "held-2");
    wait_until_stored(&server, "held-2").await;

    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest::default())
            .await,
    );
    assert_status(
        &status,
        Code::ResourceExhausted,
        "the server is at its limit of 2 concurrent calls; retry after 1 s",
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));

    // Health checks are never shed.
    HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers at the limit");

    drop((first, second));
    for call in [first_call, second_call] {
        let response = call.await.unwrap().expect("the held stream ends well");
        assert_eq!(response.into_inner().accepted_count, 1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = server
        .crew
        .list_crew_outputs(pb::ListCrewOutputsRequest::default())
        .await
    {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(Instant::now() < deadline, "the places were not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn unary_calls_meet_the_default_deadline(mut server: TestServer) {
    let release = tokio::task::block_in_place(|| hold_write_lock(&server.database, "crew_outputs"));

    let status = expect_error(server.crew.create_crew_output(create_request()).await);
    assert_status(
        &status,
        Code::DeadlineExceeded,
        "the call did not finish within the server's limit of 300 ms",
    );

    // A deadline the client sets (the grpc-timeout header) applies in place
    // of the default. tonic's server ends such a call with CANCELLED; clients
    // that track their own deadline, as grpcio and grpc-go do, report
    // DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(create_request());
    request.set_timeout(Duration::from_millis(100));
    let status = expect_error(server.crew.create_crew_output(request).await);
    assert_status(&status, Code::Cancelled, "Timeout expired");

    drop(release);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match server.crew.create_crew_output(create_request()).await {
            Ok(_) => break,
            Err(status) => {
                assert!(Instant::now() < deadline, "never served again: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn short_deadline() -> ServerOptions {
    ServerOptions {
        unary_timeout: Some(Duration::from_millis(300)),
        ..test_options()
    }
}

fn two_calls() -> ServerOptions {
    ServerOptions {
        max_concurrent_calls: 2,
        ..test_options()
    }
}

backend_tests! {
    #[options(two_calls())]
    calls_past_the_limit_are_shed,
    #[options(short_deadline())]
    unary_calls_meet_the_default_deadline,
}

/// Reads a memory figure of a process from /proc, such as `VmHWM` (peak
/// resident memory) or `VmRSS`, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Entries of the flood and bytes of each message.
const FLOOD_ENTRIES: u64 = 60_000;
const FLOOD_MESSAGE_BYTES: usize = 2_500;

async fn flood_is_slowed_by_flow_control(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let server = ServeProcess::start(database.url(), &["--pool-timeout", "60"]);
    let channel = server.channel().await;
    let baseline_kib = memory_kib(server.pid(), "VmRSS");
    let release = hold_write_lock(&database, "log_entries");

    // The client sends as fast as the stream takes entries, while the
    // database takes none.
    let produced = Arc::new(AtomicU64::new(0));
    let (sender, receiver) = mpsc::channel::<pb::IngestLogsRequest>(1);
    let counter = Arc::clone(&produced);
    let producer = tokio::spawn(async move {
        let message = "x".repeat(FLOOD_MESSAGE_BYTES);
        for index in 0..FLOOD_ENTRIES / 100 {
            let entries = (0..100)
                .map(|offset| {
                    log_entry(&format!("flood-{}", index * 100 + offset), "INFO", &message)
                })
                .collect();
            if sender
                .send(pb::IngestLogsRequest { entries })
                .await
                .is_err()
            {
                return;
            }
            counter.fetch_add(100, Ordering::Relaxed);
        }
    });
    let call = tokio::spawn(async move {
        LogServiceClient::new(channel)
            .ingest_logs(ReceiverStream::new(receiver))
            .await
    });

    // Once the stream is held up, the client can send no further.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = produced.load(Ordering::Relaxed);
    assert!(
        held < FLOOD_ENTRIES / 3,
        "{held} of {FLOOD_ENTRIES} entries were taken while the database was locked"
    );

    drop(release);
    let response = call
        .await
        .unwrap()
        .expect("the flood is stored")
        .into_inner();
    producer.await.unwrap();
    assert_eq!(response.accepted_count as u64, FLOOD_ENTRIES);
    assert_eq!(response.rejected_count, 0);

    // The whole flood is 150 MB; the server never held more than a small part.
    let growth_kib = memory_kib(server.pid(), "VmHWM").saturating_sub(baseline_kib);
    assert!(
        growth_kib < 64 * 1024,
        "server memory grew by {} MiB during the flood",
        growth_kib / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_slowed_by_flow_control_sqlite() {
    flood_is_slowed_by_flow_control(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_slowed_by_flow_control_postgres() {
    flood_is_slowed_by_flow_control(Backend::Postgres).await;
}

async fn stored_count(database: &TestDatabase) -> i64 {
    let query = "SELECT CAST(count(*) AS TEXT) AS value FROM log_entries";
    database.query_text(query).parse().unwrap()
}

async fn shutdown_drains_an_open_stream(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let mut server = ServeProcess::start(database.url(), &["--shutdown-grace", "20"]);
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let serving = health.message().await.unwrap().unwrap();
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    let (sender, receiver) = mpsc::channel::<pb::IngestLogsRequest>(4);
    let call = tokio::spawn(async move {
        LogServiceClient::new(channel)
            .ingest_logs(ReceiverStream::new(receiver))
            .await
    });
    let batch = |first: usize| pb::IngestLogsRequest {
        entries: (first..first + 100)
            .map(|index| log_entry(&format!("drain-{index}"), "INFO", "before and after"))
            .collect(),
    };
    sender.send(batch(0)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_count(&database).await < 100 {
        assert!(
            Instant::now() < deadline,
            "the first entries were not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.signal("TERM");

    // Health turns NOT_SERVING for those who watch it.
    let status = tokio::time::timeout(Duration::from_secs(10), health.message())
        .await
        .expect("no health change after SIGTERM");
    if let Ok(Some(status)) = status {
        assert_eq!(status.status, ServingStatus::NotServing as i32);
    }
    // A Watch stream stays open until the grace period ends, so it would
    // hold serve for the whole period after the log stream finishes.
    drop(health);
    // New connections are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "new connections still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The open stream goes on within the grace period.
    sender.send(batch(100)).await.unwrap();
    drop(sender);
    let response = call
        .await
        .unwrap()
        .expect("the open stream finishes during the drain")
        .into_inner();
    assert_eq!(response.accepted_count, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = server.try_wait() {
            break exit;
        }
        if Instant::now() >= deadline {
            panic!("serve did not stop:\n{}", server.stderr_lines().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "serve exited with {exit}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = server.stderr_lines().join("\n");
    assert!(logs.contains("received SIGTERM"), "{logs}");
    assert!(logs.contains("shutting down: refusing new calls"), "{logs}");
    assert!(logs.contains("server stopped"), "{logs}");
    assert_eq!(stored_count(&database).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_open_stream_sqlite() {
    shutdown_drains_an_open_stream(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_open_stream_postgres() {
    shutdown_drains_an_open_stream(Backend::Postgres).await;
}
