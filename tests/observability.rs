//! The Prometheus endpoint, the one log line per call, and the real error
//! behind a generic INTERNAL status, read from a real `serve` process.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use code_analyzer::pb;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use code_analyzer::pb::log_service_client::LogServiceClient;
use common::process::ServeProcess;
use common::{Backend, TestDatabase, log_entry, wait_until};
use serde_json::Value;
use tonic::Code;

/// Sends one HTTP/1.1 request to the metrics endpoint and returns the
/// status line and the body.
fn http(address: &str, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Makes calls with known outcomes: one success, one NOT_FOUND, and a log
/// stream with accepted, duplicate and rejected entries.
async fn make_calls(server: &ServeProcess) {
    let channel = server.channel().await;
    let mut crew = CrewServiceClient::new(channel.clone());
    crew.create_crew_output(pb::CreateCrewOutputRequest {
        crew_name: "observed-crew".to_string(),
        output_type: "review".to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let missing = crew
        .get_crew_output(pb::GetCrewOutputRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let entries = vec![
        log_entry("seen-1", "INFO", "first"),
        log_entry("seen-2", "WARN", "second"),
        log_entry("seen-1", "INFO", "first again"),
        log_entry("seen-3", "LOUD", "no such level"),
    ];
    let response = LogServiceClient::new(channel)
        .ingest_logs(tokio_stream::iter([pb::IngestLogsRequest { entries }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            response.accepted_count,
            response.duplicate_count,
            response.rejected_count
        ),
        (2, 1, 1)
    );
}

async fn metrics_count_calls_ingest_and_pool(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let server = ServeProcess::start(database.url(), &["--metrics-listen", "127.0.0.1:0"]);
    assert!(
        !server.metrics_address.is_empty(),
        "no metrics address logged"
    );
    make_calls(&server).await;

    let expected = [
        "# TYPE grpc_server_handled_total counter",
        "grpc_server_handled_total{grpc_service=\"code_analyzer.v1.CrewService\",\
         grpc_method=\"CreateCrewOutput\",grpc_code=\"OK\"} 1",
        "grpc_server_handled_total{grpc_service=\"code_analyzer.v1.CrewService\",\
         grpc_method=\"GetCrewOutput\",grpc_code=\"NotFound\"} 1",
        "grpc_server_handled_total{grpc_service=\"code_analyzer.v1.LogService\",\
         grpc_method=\"IngestLogs\",grpc_code=\"OK\"} 1",
        "# TYPE grpc_server_handling_seconds histogram",
        "grpc_server_handling_seconds_bucket{grpc_service=\"code_analyzer.v1.CrewService\",\
         grpc_method=\"CreateCrewOutput\",grpc_code=\"OK\",le=\"+Inf\"} 1",
        "grpc_server_handling_seconds_count{grpc_service=\"code_analyzer.v1.CrewService\",\
         grpc_method=\"CreateCrewOutput\",grpc_code=\"OK\"} 1",
        "grpc_server_started_total{grpc_service=\"code_analyzer.v1.CrewService\",\
         grpc_method=\"GetCrewOutput\"} 1",
        "code_analyzer_log_entries_ingested_total{result=\"accepted\"} 2",
        "code_analyzer_log_entries_ingested_total{result=\"duplicate\"} 1",
        "code_analyzer_log_entries_ingested_total{result=\"rejected\"} 1",
        "code_analyzer_db_pool_max_connections 8",
        "code_analyzer_db_pool_connections{state=\"in_use\"}",
        "# TYPE code_analyzer_db_pool_wait_seconds histogram",
        "code_analyzer_requests_shed_total 0",
        "code_analyzer_retention_passes_total",
        "code_analyzer_build_info{version=\"",
    ];
    // A call is counted when its response ends, just after the client has
    // read it, so the last one may take a moment to show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = http(&server.metrics_address, "GET", "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let missing: Vec<&&str> = expected
            .iter()
            .filter(|line| !body.contains(**line))
            .collect();
        if missing.is_empty() {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing {missing:?} in:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // Every sample line is NAME{LABELS} VALUE with a numeric value.
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "bad name in {line:?}"
        );
    }

    let (status, _) = http(&server.metrics_address, "GET", "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(&server.metrics_address, "POST", "/metrics");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_ingest_and_pool_sqlite() {
    metrics_count_calls_ingest_and_pool(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_ingest_and_pool_postgres() {
    metrics_count_calls_ingest_and_pool(Backend::Postgres).await;
}

/// Waits for and returns the JSON log lines of `server` about calls of
/// `method`: the line is written when the response ends, just after the client
/// has read it.
async fn call_lines(server: &ServeProcess, method: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = server
            .stderr_lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["fields"]["method"] == method)
            .collect();
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_level_follows_code() {
    let folder = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", folder.path().join("logged.db").display());
    let server = ServeProcess::start_with_log_level(&url, &[], "info,code_analyzer=debug");
    make_calls(&server).await;

    let created = call_lines(&server, "code_analyzer.v1.CrewService/CreateCrewOutput").await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["level"], "DEBUG");
    assert_eq!(created[0]["fields"]["code"], "OK");
    assert_eq!(created[0]["fields"]["message"], "call finished");
    assert!(created[0]["fields"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(created[0]["fields"]["caller"], "anonymous");
    assert!(
        created[0]["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let missing = call_lines(&server, "code_analyzer.v1.CrewService/GetCrewOutput").await;
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["level"], "INFO");
    assert_eq!(missing[0]["fields"]["code"], "NotFound");
    assert_eq!(missing[0]["fields"]["message"], "call refused or failed");
}

/// Returns the JSON log lines of `server` whose `fields.message` is `message`.
fn lines_with_message(server: &ServeProcess, message: &str) -> Vec<Value> {
    server
        .stderr_lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .collect()
}

/// Checks that a query on a dropped table fails with a generic INTERNAL
/// status and that the server logs the database's own error once.
async fn internal_error_is_generic_and_logged(backend: Backend) {
    let Some(database) = TestDatabase::create(backend) else {
        return;
    };
    let server = ServeProcess::start(database.url(), &[]);
    let mut logs = LogServiceClient::new(server.channel().await);
    database.execute("DROP TABLE log_entries");

    let status = logs
        .query_logs(pb::QueryLogsRequest::default())
        .await
        .expect_err("a query on a dropped table must fail");
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert_eq!(status.message(), "internal database error");
    assert!(status.details().is_empty(), "{:?}", status.details());

    // The call's own line is written after the error, when the response ends.
    let method = "code_analyzer.v1.LogService/QueryLogs";
    wait_until("the log line of the failed QueryLogs call", || {
        lines_with_message(&server, "call failed on the server")
            .iter()
            .any(|line| line["fields"]["method"] == method)
    })
    .await;
    let database_error = match backend {
        Backend::Sqlite => "no such table: log_entries",
        Backend::Postgres => "relation \"log_entries\" does not exist",
    };
    let logged = lines_with_message(&server, "database error");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["level"], "ERROR");
    let error = logged[0]["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(database_error), "{error:?}");
    // Log lines are JSON, which escapes the quotes of PostgreSQL's message.
    let escaped = serde_json::to_string(database_error).unwrap();
    let escaped = escaped.trim_matches('"');
    let mentions = server
        .stderr_lines()
        .iter()
        .filter(|line| line.contains(escaped))
        .count();
    assert_eq!(mentions, 1, "the error is logged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_error_is_generic_and_logged_sqlite() {
    internal_error_is_generic_and_logged(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_error_is_generic_and_logged_postgres() {
    internal_error_is_generic_and_logged(Backend::Postgres).await;
}
