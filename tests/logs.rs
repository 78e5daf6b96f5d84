//! LogService: streamed, idempotent IngestLogs and filtered QueryLogs.

mod common;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use code_analyzer::pb;
use common::{
    TestServer, assert_status, expect_error, fixture, log_entry, nested_struct, time, to_struct,
};
use prost_types::Timestamp;
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const FIXTURE_LOGS: [&str; 4] = ["apache", "hdfs", "spark", "zookeeper"];

fn at(mut entry: pb::NewLogEntry, seconds: i64) -> pb::NewLogEntry {
    entry.timestamp = Some(time(seconds));
    entry
}

fn from_crew(mut entry: pb::NewLogEntry, crew_name: &str) -> pb::NewLogEntry {
    entry.crew_name = crew_name.to_string();
    entry
}

/// `count` INFO entries with ids `PREFIX-0`, `PREFIX-1`, ...
fn numbered(prefix: &str, count: usize) -> Vec<pb::NewLogEntry> {
    (0..count)
        .map(|index| {
            at(
                log_entry(
                    &format!("{prefix}-{index}"),
                    "INFO",
                    &format!("entry {index}"),
                ),
                index as i64,
            )
        })
        .collect()
}

/// Lists every page of `request` and returns the entries in order.
async fn query_all(server: &mut TestServer, request: pb::QueryLogsRequest) -> Vec<pb::LogEntry> {
    let mut entries = Vec::new();
    let mut request = request;
    loop {
        let mut page = server
            .logs
            .query_logs(request.clone())
            .await
            .expect("QueryLogs failed")
            .into_inner();
        entries.append(&mut page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        request.page_token = page.next_page_token;
    }
}

async fn query_entry_ids(server: &mut TestServer, request: pb::QueryLogsRequest) -> Vec<String> {
    query_all(server, request)
        .await
        .into_iter()
        .map(|entry| entry.entry_id)
        .collect()
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn micros(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

/// Reads a fixture JSON Lines file as entries with ids `NAME:LINE`.
fn fixture_entries(name: &str, path: &std::path::Path) -> Vec<pb::NewLogEntry> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
            pb::NewLogEntry {
                entry_id: format!("{name}:{}", index + 1),
                timestamp: Some(Timestamp::from_str(&text("timestamp")).unwrap()),
                level: text("level"),
                message: text("message"),
                crew_name: text("crew_name"),
                crew_output_id: 0,
                metadata: value.get("metadata").cloned().map(to_struct),
            }
        })
        .collect()
}

async fn ingest_counts_accepted(mut server: TestServer) {
    let entries = numbered("run", 6);
    let response = server
        .ingest(vec![
            entries[..2].to_vec(),
            entries[2..4].to_vec(),
            entries[4..].to_vec(),
        ])
        .await
        .unwrap();

    assert_eq!(response.accepted_count, 6);
    assert_eq!(response.duplicate_count, 0);
    assert_eq!(response.rejected_count, 0);
    assert!(response.rejections.is_empty());
    assert_eq!(server.stored_log_count().await, 6);
}

async fn ingest_stores_entry_fields(mut server: TestServer) {
    let run = server.create_crew_output("reviewer").await;
    let mut entry = at(log_entry("e-1", "Warning", "disk almost full"), 30);
    entry.crew_name = "reviewer".to_string();
    entry.crew_output_id = run.id;
    entry.metadata = Some(to_struct(
        json!({"component": "httpd", "pid": 6725, "tags": ["a", "b"]}),
    ));
    server.ingest(vec![vec![entry]]).await.unwrap();

    let stored = query_all(&mut server, pb::QueryLogsRequest::default()).await;

    assert_eq!(stored.len(), 1);
    assert!(stored[0].id > 0);
    assert_eq!(stored[0].entry_id, "e-1");
    assert_eq!(stored[0].timestamp, Some(time(30)));
    assert_eq!(stored[0].level, "Warning", "the level is kept as written");
    assert_eq!(stored[0].severity_number, 13);
    assert_eq!(stored[0].message, "disk almost full");
    assert_eq!(stored[0].crew_name, "reviewer");
    assert_eq!(stored[0].crew_output_id, run.id);
    assert_eq!(
        stored[0].metadata,
        Some(to_struct(
            json!({"component": "httpd", "pid": 6725, "tags": ["a", "b"]})
        ))
    );
    assert!(stored[0].created_at.is_some());
}

async fn ingest_without_timestamp_uses_receive_time(mut server: TestServer) {
    let before = now_micros();
    server
        .ingest(vec![vec![log_entry("", "INFO", "no time given")]])
        .await
        .unwrap();
    let after = now_micros();

    let stored = query_all(&mut server, pb::QueryLogsRequest::default()).await;

    assert_eq!(stored[0].entry_id, "", "no entry id was sent");
    let timestamp = micros(stored[0].timestamp.as_ref().unwrap());
    assert!(
        before <= timestamp && timestamp <= after,
        "{before} <= {timestamp} <= {after}"
    );
}

async fn ingest_reports_rejections(mut server: TestServer) {
    let run = server.create_crew_output("reviewer").await;
    let mut good_with_run = log_entry("ok-2", "INFO", "fine");
    good_with_run.crew_output_id = run.id;
    let mut missing_run = log_entry("bad-run", "INFO", "no such run");
    missing_run.crew_output_id = 999;
    let mut negative_run = log_entry("bad-negative", "INFO", "negative run");
    negative_run.crew_output_id = -1;
    let mut deep = log_entry("bad-metadata", "INFO", "deep");
    deep.metadata = Some(nested_struct(33));
    let mut bad_time = log_entry("bad-time", "INFO", "bad time");
    bad_time.timestamp = Some(Timestamp {
        seconds: 0,
        nanos: 2_000_000_000,
    });

    let response = server
        .ingest(vec![
            vec![
                log_entry("ok-1", "INFO", "fine"),
                log_entry("bad-level", "verbose", "chatty"),
            ],
            vec![
                log_entry("bad-message", "INFO", ""),
                missing_run,
                deep,
                log_entry("bad-empty-level", "", "no level"),
                negative_run,
                bad_time,
                log_entry(&"i".repeat(257), "INFO", "long id"),
                good_with_run,
            ],
        ])
        .await
        .unwrap();

    assert_eq!(response.accepted_count, 2);
    assert_eq!(response.duplicate_count, 0);
    assert_eq!(response.rejected_count, 8);
    let rejections: Vec<(i64, &str, &str)> = response
        .rejections
        .iter()
        .map(|rejection| {
            (
                rejection.position,
                rejection.entry_id.as_str(),
                rejection.field.as_str(),
            )
        })
        .collect();
    let long_id = "i".repeat(257);
    assert_eq!(
        rejections,
        vec![
            (1, "bad-level", "level"),
            (2, "bad-message", "message"),
            (3, "bad-run", "crew_output_id"),
            (4, "bad-metadata", "metadata"),
            (5, "bad-empty-level", "level"),
            (6, "bad-negative", "crew_output_id"),
            (7, "bad-time", "timestamp"),
            (8, long_id.as_str(), "entry_id"),
        ]
    );
    let reasons: Vec<&str> = response
        .rejections
        .iter()
        .map(|rejection| rejection.reason.as_str())
        .collect();
    assert_eq!(
        reasons[0],
        "\"verbose\" is not a level name of Python logging, log4j, syslog or OpenTelemetry"
    );
    assert_eq!(reasons[1], "is required");
    assert_eq!(reasons[2], "crew output 999 not found");
    assert_eq!(reasons[3], "is nested deeper than 32 levels");
    assert_eq!(reasons[4], "is required");
    assert_eq!(reasons[5], "must not be negative, got -1");
    assert_eq!(reasons[6], "is not a valid timestamp");
    assert!(reasons[7].contains("limit of 256"), "{}", reasons[7]);
    let stored = query_entry_ids(&mut server, pb::QueryLogsRequest::default()).await;
    let stored: HashSet<String> = stored.into_iter().collect();
    assert_eq!(
        stored,
        HashSet::from(["ok-1".to_string(), "ok-2".to_string()])
    );
}

async fn ingest_rejects_oversized_fields(mut server: TestServer) {
    let mut long_crew = log_entry("long-crew", "INFO", "m");
    long_crew.crew_name = "c".repeat(257);
    let mut big_metadata = log_entry("big-metadata", "INFO", "m");
    big_metadata.metadata = Some(to_struct(json!({"text": "x".repeat(64 * 1024)})));
    let response = server
        .ingest(vec![vec![
            log_entry("long-message", "INFO", &"m".repeat(64 * 1024 + 1)),
            long_crew,
            big_metadata,
        ]])
        .await
        .unwrap();

    let fields: Vec<&str> = response
        .rejections
        .iter()
        .map(|rejection| rejection.field.as_str())
        .collect();
    assert_eq!(fields, ["message", "crew_name", "metadata"]);
    assert!(
        response
            .rejections
            .iter()
            .all(|rejection| rejection.reason.contains("more than the limit"))
    );
    assert_eq!(response.accepted_count, 0);
}

async fn ingest_lists_first_thousand_rejections(mut server: TestServer) {
    let entries: Vec<pb::NewLogEntry> = (0..1_005)
        .map(|index| log_entry(&format!("bad-{index}"), "verbose", "m"))
        .collect();
    let response = server.ingest(vec![entries]).await.unwrap();

    assert_eq!(response.rejected_count, 1_005);
    assert_eq!(response.rejections.len(), 1_000);
    assert_eq!(response.rejections.last().unwrap().position, 999);
}

async fn ingest_accepts_level_names(mut server: TestServer) {
    let levels = [
        ("warning", 13),
        ("WARN", 13),
        ("notice", 10),
        ("err", 17),
        ("CRITICAL", 18),
        ("INFO2", 10),
        ("debug", 5),
        ("Trace", 1),
        ("FATAL", 21),
        ("emerg", 22),
        ("alert", 19),
        ("crit", 18),
        ("Error", 17),
        ("info", 9),
        ("SEVERE", 17),
        ("fine", 5),
        ("notset", 1),
        ("WARN4", 16),
        ("fatal4", 24),
        ("panic", 22),
        (" INFO ", 9),
        ("17", 17),
    ];
    let entries: Vec<pb::NewLogEntry> = levels
        .iter()
        .enumerate()
        .map(|(index, (level, _))| log_entry(&format!("level-{index}"), level, "m"))
        .collect();
    let response = server.ingest(vec![entries]).await.unwrap();
    assert_eq!(
        response.rejected_count, 0,
        "rejections: {:?}",
        response.rejections
    );
    assert_eq!(response.accepted_count, levels.len() as i64);

    let stored: HashMap<String, (String, i32)> =
        query_all(&mut server, pb::QueryLogsRequest::default())
            .await
            .into_iter()
            .map(|entry| (entry.entry_id, (entry.level, entry.severity_number)))
            .collect();
    for (index, (level, severity)) in levels.iter().enumerate() {
        let (stored_level, stored_severity) = &stored[&format!("level-{index}")];
        assert_eq!(stored_level, level);
        assert_eq!(stored_severity, severity, "severity of {level:?}");
    }
}

async fn ingest_rejects_unknown_level_names(mut server: TestServer) {
    let names = [
        "verbose",
        "INFO5",
        "INFO1",
        "0",
        "25",
        "WARNX",
        "information please",
    ];
    let entries: Vec<pb::NewLogEntry> = names.iter().map(|name| log_entry("", name, "m")).collect();
    let response = server.ingest(vec![entries]).await.unwrap();

    assert_eq!(response.rejected_count, names.len() as i64);
    assert!(
        response
            .rejections
            .iter()
            .all(|rejection| rejection.field == "level")
    );
    assert_eq!(response.accepted_count, 0);
}

async fn ingest_message_over_limit_fails_stream(mut server: TestServer) {
    let first = numbered("kept", 5);
    let oversized = numbered("too-many", 10_001);
    let status = server.ingest(vec![first, oversized]).await.unwrap_err();

    assert_status(
        &status,
        Code::InvalidArgument,
        "entries: a message has 10001 entries",
    );
    assert!(
        status.message().contains("limit of 10000"),
        "{}",
        status.message()
    );
    assert_eq!(
        server.stored_log_count().await,
        5,
        "entries before the bad message stay stored"
    );
}

async fn ingest_message_at_limit_accepted(mut server: TestServer) {
    let response = server.ingest(vec![numbered("many", 10_000)]).await.unwrap();

    assert_eq!(response.accepted_count, 10_000);
    assert_eq!(server.stored_log_count().await, 10_000);
}

async fn ingest_empty_stream_stores_nothing(mut server: TestServer) {
    let response = server.ingest(Vec::new()).await.unwrap();
    assert_eq!(response, pb::IngestLogsResponse::default());

    let response = server.ingest(vec![Vec::new(), Vec::new()]).await.unwrap();
    assert_eq!(response, pb::IngestLogsResponse::default());
}

async fn ingest_counts_duplicates_within_stream(mut server: TestServer) {
    // 2,500 entries span several write batches of about 1,000, and each
    // repeat falls in a later batch than its original.
    let entries = numbered("dup", 2_500);
    let mut repeats = vec![entries[0].clone(), entries[1].clone()];
    repeats.push(entries[1].clone());
    let response = server
        .ingest(vec![
            entries[..1_200].to_vec(),
            repeats[..1].to_vec(),
            entries[1_200..].to_vec(),
            repeats[1..].to_vec(),
        ])
        .await
        .unwrap();

    assert_eq!(response.accepted_count, 2_500);
    assert_eq!(response.duplicate_count, 3);
    assert_eq!(server.stored_log_count().await, 2_500);
}

async fn ingest_counts_duplicates_within_message(mut server: TestServer) {
    let entry = log_entry("same", "INFO", "m");
    let response = server
        .ingest(vec![vec![entry.clone(), entry.clone(), entry]])
        .await
        .unwrap();

    assert_eq!(response.accepted_count, 1);
    assert_eq!(response.duplicate_count, 2);
}

async fn ingest_counts_duplicates_across_streams(mut server: TestServer) {
    let entries = numbered("again", 30);
    let first = server.ingest(vec![entries.clone()]).await.unwrap();
    let second = server
        .ingest(vec![entries[..10].to_vec(), entries[10..].to_vec()])
        .await
        .unwrap();

    assert_eq!(first.accepted_count, 30);
    assert_eq!(second.accepted_count, 0);
    assert_eq!(second.duplicate_count, 30);
    assert_eq!(server.stored_log_count().await, 30);
}

async fn ingest_concurrent_streams_store_once(mut server: TestServer) {
    let entries = numbered("race", 3_000);
    let messages: Vec<Vec<pb::NewLogEntry>> = entries
        .chunks(500)
        .map(<[pb::NewLogEntry]>::to_vec)
        .collect();
    let mut first_client = server.logs.clone();
    let mut second_client = server.logs.clone();
    let first_messages = messages.clone();
    let first = tokio::spawn(async move {
        let requests = first_messages
            .into_iter()
            .map(|entries| pb::IngestLogsRequest { entries });
        first_client
            .ingest_logs(tokio_stream::iter(requests))
            .await
            .map(tonic::Response::into_inner)
    });
    let second = tokio::spawn(async move {
        let requests = messages
            .into_iter()
            .map(|entries| pb::IngestLogsRequest { entries });
        second_client
            .ingest_logs(tokio_stream::iter(requests))
            .await
            .map(tonic::Response::into_inner)
    });
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();

    assert_eq!(first.accepted_count + second.accepted_count, 3_000);
    assert_eq!(first.duplicate_count + second.duplicate_count, 3_000);
    assert_eq!(server.stored_log_count().await, 3_000);
}

async fn ingest_without_entry_id_never_duplicate(mut server: TestServer) {
    let entry = at(log_entry("", "INFO", "same text"), 5);
    let first = server
        .ingest(vec![vec![entry.clone(), entry.clone()]])
        .await
        .unwrap();
    let second = server.ingest(vec![vec![entry]]).await.unwrap();

    assert_eq!(first.accepted_count, 2);
    assert_eq!(second.accepted_count, 1);
    assert_eq!(server.stored_log_count().await, 3);
}

async fn ingest_resend_after_dropped_stream(mut server: TestServer) {
    const TOTAL: usize = 40;
    let entries = numbered("resend", TOTAL);
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::IngestLogsRequest>(4);
    let mut client = server.logs.clone();
    let call = tokio::spawn(async move { client.ingest_logs(ReceiverStream::new(receiver)).await });
    for chunk in entries[..TOTAL / 2].chunks(5) {
        sender
            .send(pb::IngestLogsRequest {
                entries: chunk.to_vec(),
            })
            .await
            .unwrap();
    }

    // The server writes a partial batch after 100 ms without messages.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stored_log_count().await < (TOTAL / 2) as i64 {
        assert!(
            Instant::now() < deadline,
            "the first half was not stored within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    drop(sender);

    let response = server
        .ingest(vec![entries[..25].to_vec(), entries[25..].to_vec()])
        .await
        .unwrap();

    assert_eq!(response.accepted_count, (TOTAL / 2) as i64);
    assert_eq!(response.duplicate_count, (TOTAL / 2) as i64);
    assert_eq!(
        response.accepted_count + response.duplicate_count,
        TOTAL as i64
    );
    assert_eq!(server.stored_log_count().await, TOTAL as i64);
    let ids: HashSet<String> = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(ids.len(), TOTAL);
}

async fn query_lists_newest_first(mut server: TestServer) {
    server
        .ingest(vec![vec![
            at(log_entry("middle", "INFO", "m"), 20),
            at(log_entry("oldest", "INFO", "m"), 10),
            at(log_entry("newest", "INFO", "m"), 30),
        ]])
        .await
        .unwrap();

    let ids = query_entry_ids(&mut server, pb::QueryLogsRequest::default()).await;

    assert_eq!(ids, ["newest", "middle", "oldest"]);
}

async fn query_filters_by_time_range(mut server: TestServer) {
    let entries = (0..5)
        .map(|index| at(log_entry(&format!("t{index}"), "INFO", "m"), index * 10))
        .collect();
    server.ingest(vec![entries]).await.unwrap();

    let range = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            start_time: Some(time(10)),
            end_time: Some(time(30)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(range, ["t2", "t1"], "start is inclusive and end exclusive");

    let from = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            start_time: Some(time(30)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(from, ["t4", "t3"]);

    let until = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            end_time: Some(time(10)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(until, ["t0"]);
}

async fn query_filters_by_min_level(mut server: TestServer) {
    server
        .ingest(vec![vec![
            at(log_entry("debug", "debug", "m"), 1),
            at(log_entry("info", "INFO", "m"), 2),
            at(log_entry("notice", "notice", "m"), 3),
            at(log_entry("warn", "WARN", "m"), 4),
            at(log_entry("err", "err", "m"), 5),
            at(log_entry("critical", "CRITICAL", "m"), 6),
        ]])
        .await
        .unwrap();

    let warnings = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            min_level: "warning".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(warnings, ["critical", "err", "warn"]);

    let notices = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            min_level: "INFO2".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(notices, ["critical", "err", "warn", "notice"]);

    let status = expect_error(
        server
            .logs
            .query_logs(pb::QueryLogsRequest {
                min_level: "verbose".to_string(),
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "min_level: \"verbose\" is not a known level name",
    );
}

async fn query_filters_by_crew(mut server: TestServer) {
    let run = server.create_crew_output("reviewer").await;
    let mut of_run = from_crew(at(log_entry("of-run", "INFO", "m"), 1), "reviewer");
    of_run.crew_output_id = run.id;
    server
        .ingest(vec![vec![
            of_run,
            from_crew(at(log_entry("reviewer-only", "INFO", "m"), 2), "reviewer"),
            from_crew(at(log_entry("other", "INFO", "m"), 3), "fixer"),
        ]])
        .await
        .unwrap();

    let by_name = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            crew_name: "reviewer".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_name, ["reviewer-only", "of-run"]);

    let by_run = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            crew_output_id: run.id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_run, ["of-run"]);

    let by_case = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            crew_name: "Reviewer".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_case, Vec::<String>::new());
}

async fn query_message_contains_literal(mut server: TestServer) {
    server
        .ingest(vec![vec![
            at(log_entry("percent", "INFO", "upload 100% done"), 1),
            at(log_entry("plain", "INFO", "upload 100 done"), 2),
            at(log_entry("underscore", "INFO", "key a_b missing"), 3),
            at(log_entry("letter", "INFO", "key aXb missing"), 4),
            at(log_entry("upper", "INFO", "Upload Done"), 5),
            at(log_entry("backslash", "INFO", "path C:\\temp"), 6),
        ]])
        .await
        .unwrap();

    let percent = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            message_contains: "100%".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(percent, ["percent"]);

    let underscore = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            message_contains: "a_b".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(underscore, ["underscore"]);

    let lower = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            message_contains: "done".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(lower, ["plain", "percent"], "the match is case-sensitive");

    let backslash = query_entry_ids(
        &mut server,
        pb::QueryLogsRequest {
            message_contains: "C:\\t".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(backslash, ["backslash"]);
}

async fn query_pages_ties_once(mut server: TestServer) {
    let mut entries: Vec<pb::NewLogEntry> = (0..7)
        .map(|index| at(log_entry(&format!("tie{index}"), "INFO", "m"), 100))
        .collect();
    entries.push(at(log_entry("before", "INFO", "m"), 50));
    entries.push(at(log_entry("after", "INFO", "m"), 150));
    entries.push(at(log_entry("tie-late", "INFO", "m"), 100));
    server.ingest(vec![entries]).await.unwrap();

    let whole = query_all(
        &mut server,
        pb::QueryLogsRequest {
            page_size: 1000,
            ..Default::default()
        },
    )
    .await;
    let order: Vec<(i64, i64)> = whole
        .iter()
        .map(|entry| (micros(entry.timestamp.as_ref().unwrap()), entry.id))
        .collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        order, sorted,
        "ordered by timestamp, then id, both descending"
    );

    for page_size in [1, 2, 3] {
        let mut request = pb::QueryLogsRequest {
            page_size,
            ..Default::default()
        };
        let mut ids = Vec::new();
        loop {
            let page = server
                .logs
                .query_logs(request.clone())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.total_size, 10);
            assert!(page.entries.len() <= page_size as usize);
            ids.extend(page.entries.iter().map(|entry| entry.id));
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        let whole_ids: Vec<i64> = whole.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, whole_ids, "page_size {page_size}");
    }
}

async fn query_default_page_is_hundred(mut server: TestServer) {
    server.ingest(vec![numbered("page", 101)]).await.unwrap();
    let page = server
        .logs
        .query_logs(pb::QueryLogsRequest::default())
        .await
        .unwrap()
        .into_inner();

    assert_eq!(page.entries.len(), 100);
    assert_eq!(page.total_size, 101);
    assert!(!page.next_page_token.is_empty());
}

async fn query_rejects_invalid_requests(mut server: TestServer) {
    server.ingest(vec![numbered("q", 3)]).await.unwrap();
    let first = server
        .logs
        .query_logs(pb::QueryLogsRequest {
            page_size: 1,
            crew_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cases = [
        (
            pb::QueryLogsRequest {
                start_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                ..Default::default()
            },
            "start_time:",
        ),
        (
            pb::QueryLogsRequest {
                end_time: Some(Timestamp {
                    seconds: 0,
                    nanos: 1_000_000_000,
                }),
                ..Default::default()
            },
            "end_time:",
        ),
        (
            pb::QueryLogsRequest {
                crew_output_id: -1,
                ..Default::default()
            },
            "crew_output_id:",
        ),
        (
            pb::QueryLogsRequest {
                crew_name: "c".repeat(257),
                ..Default::default()
            },
            "crew_name:",
        ),
        (
            pb::QueryLogsRequest {
                message_contains: "m".repeat(257),
                ..Default::default()
            },
            "message_contains:",
        ),
        (
            pb::QueryLogsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size:",
        ),
        (
            pb::QueryLogsRequest {
                page_size: 1,
                crew_name: "other".to_string(),
                page_token: first.next_page_token,
                ..Default::default()
            },
            "page_token:",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.logs.query_logs(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn ingest_fixture_logs_once(mut server: TestServer) {
    let mut files = Vec::new();
    for name in FIXTURE_LOGS {
        let Some(path) = fixture(&format!("logs/{name}.jsonl")) else {
            return;
        };
        files.push((name, path));
    }
    let mut messages = Vec::new();
    for (name, path) in &files {
        let entries = fixture_entries(name, path);
        assert_eq!(entries.len(), 2_000, "{name}");
        messages.extend(entries.chunks(1_000).map(<[pb::NewLogEntry]>::to_vec));
    }

    let first = server.ingest(messages.clone()).await.unwrap();
    assert_eq!(first.accepted_count, 8_000);
    assert_eq!(
        first.rejected_count, 0,
        "rejections: {:?}",
        first.rejections
    );
    assert_eq!(server.stored_log_count().await, 8_000);

    let second = server.ingest(messages).await.unwrap();
    assert_eq!(second.accepted_count, 0);
    assert_eq!(second.duplicate_count, 8_000);
    assert_eq!(server.stored_log_count().await, 8_000);

    for name in FIXTURE_LOGS {
        let page = server
            .logs
            .query_logs(pb::QueryLogsRequest {
                crew_name: name.to_string(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 2_000, "{name}");
    }
}

backend_tests! {
    ingest_counts_accepted,
    ingest_stores_entry_fields,
    ingest_without_timestamp_uses_receive_time,
    ingest_reports_rejections,
    ingest_rejects_oversized_fields,
    ingest_lists_first_thousand_rejections,
    ingest_accepts_level_names,
    ingest_rejects_unknown_level_names,
    ingest_message_over_limit_fails_stream,
    ingest_message_at_limit_accepted,
    ingest_empty_stream_stores_nothing,
    ingest_counts_duplicates_within_stream,
    ingest_counts_duplicates_within_message,
    ingest_counts_duplicates_across_streams,
    ingest_concurrent_streams_store_once,
    ingest_without_entry_id_never_duplicate,
    ingest_resend_after_dropped_stream,
    query_lists_newest_first,
    query_filters_by_time_range,
    query_filters_by_min_level,
    query_filters_by_crew,
    query_message_contains_literal,
    query_pages_ties_once,
    query_default_page_is_hundred,
    query_rejects_invalid_requests,
    ingest_fixture_logs_once,
}
