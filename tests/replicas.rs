//! Several server processes on one PostgreSQL database: migrations run once
//! when replicas start together, log entries with ids are stored exactly
//! once whichever replica receives them, and concurrent updates on both
//! replicas are each applied and counted.

mod common;

use code_analyzer::pb;
use code_analyzer::pb::analysis_service_client::AnalysisServiceClient;
use code_analyzer::pb::crew_service_client::CrewServiceClient;
use code_analyzer::pb::log_service_client::LogServiceClient;
use common::process::ServeProcess;
use common::{Backend, TestDatabase};
use tonic::transport::Channel;

const ENTRIES_PER_CLIENT: usize = 50_000;
const ENTRIES_PER_MESSAGE: usize = 1_000;

fn stream_entries(client: usize) -> Vec<pb::IngestLogsRequest> {
    (0..ENTRIES_PER_CLIENT)
        .collect::<Vec<_>>()
        .chunks(ENTRIES_PER_MESSAGE)
        .map(|chunk| pb::IngestLogsRequest {
            entries: chunk
                .iter()
                .map(|line| pb::NewLogEntry {
                    entry_id: format!("client-{client}:{line}"),
                    timestamp: Some(common::time(1_700_000_000 + *line as i64)),
                    level: "INFO".to_string(),
                    message: format!("client {client} line {line}"),
                    crew_name: format!("crew-{client}"),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}

async fn ingest(channel: Channel, client: usize) -> pb::IngestLogsResponse {
    LogServiceClient::new(channel)
        .ingest_logs(tokio_stream::iter(stream_entries(client)))
        .await
        .expect("ingest failed")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrate_once() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let url = database.url().to_string();
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || ServeProcess::start(&url, &[]))
        })
        .collect();
    let replicas: Vec<ServeProcess> = starts
        .into_iter()
        .map(|start| start.join().unwrap())
        .collect();

    let migrating: Vec<&ServeProcess> = replicas
        .iter()
        .filter(|replica| replica.migrations_applied != "[]")
        .collect();
    assert_eq!(migrating.len(), 1, "replicas that applied migrations");
    let recorded =
        database.query_text("SELECT count(*)::text AS value FROM __diesel_schema_migrations");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(recorded, migrations.to_string());

    for replica in &replicas {
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(replica.channel().await);
        let response = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health check failed")
            .into_inner();
        assert_eq!(
            response.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_store_each_entry_once() {
    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let first = ServeProcess::start(database.url(), &[]);
    let second = ServeProcess::start(database.url(), &[]);
    let replicas = [first.channel().await, second.channel().await];

    // Clients 0 and 1 stream to the first replica, 2 and 3 to the second;
    // client 3 then re-sends its whole stream through the first replica.
    let mut streams = Vec::new();
    for client in 0..4 {
        let channel = replicas[client / 2].clone();
        streams.push(tokio::spawn(ingest(channel, client)));
    }
    let resend_channel = replicas[0].clone();
    let resend = tokio::spawn(async move {
        let first = ingest(resend_channel.clone(), 3).await;
        (first, ingest(resend_channel, 3).await)
    });

    let mut accepted = 0;
    let mut duplicates = 0;
    for stream in streams {
        let response = stream.await.unwrap();
        accepted += response.accepted_count;
        duplicates += response.duplicate_count;
        assert_eq!(response.rejected_count, 0);
    }
    let (first_resend, second_resend) = resend.await.unwrap();
    for response in [first_resend, second_resend] {
        accepted += response.accepted_count;
        duplicates += response.duplicate_count;
    }

    let stored = database.query_text("SELECT count(*)::text AS value FROM log_entries");
    assert_eq!(stored, "200000");
    assert_eq!(accepted, 200_000);
    assert_eq!(duplicates, 2 * ENTRIES_PER_CLIENT as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_count_every_update() {
    const WRITERS_PER_REPLICA: usize = 4;
    const UPDATES_PER_WRITER: usize = 25;

    let Some(database) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let first = ServeProcess::start(database.url(), &[]);
    let second = ServeProcess::start(database.url(), &[]);
    let replicas = [first.channel().await, second.channel().await];

    let mut crews = CrewServiceClient::new(replicas[0].clone());
    let run = crews
        .create_crew_output(pb::CreateCrewOutputRequest {
            crew_name: "replica-crew".to_string(),
            output_type: "review".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let finding = AnalysisServiceClient::new(replicas[1].clone())
        .record_findings(pb::RecordFindingsRequest {
            crew_output_id: run.id,
            findings: vec![common::new_finding(
                "src/app.py",
                "S105",
                "hardcoded password",
            )],
        })
        .await
        .unwrap()
        .into_inner()
        .findings
        .remove(0);

    let mut writers = Vec::new();
    for writer in 0..2 * WRITERS_PER_REPLICA {
        let channel = replicas[writer % 2].clone();
        let (run_id, finding_id) = (run.id, finding.id);
        writers.push(tokio::spawn(async move {
            let mut findings = AnalysisServiceClient::new(channel.clone());
            let mut crews = CrewServiceClient::new(channel);
            let mut last = Vec::new();
            for update in 0..UPDATES_PER_WRITER {
                let reason = format!("writer {writer} update {update}");
                let updated = findings
                    .update_finding(pb::UpdateFindingRequest {
                        id: finding_id,
                        status: pb::FindingStatus::Confirmed as i32,
                        reason: reason.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("finding update failed")
                    .into_inner();
                last.push(("finding", updated.revision, reason.clone()));

                // Even writers change the results, odd writers the error
                // message: an update built on a stale read would undo the
                // other kind's last change.
                let (kind, output, path) = if writer % 2 == 0 {
                    let results = common::to_struct(serde_json::json!({ "last": reason }));
                    let output = pb::CrewOutput {
                        results: Some(results),
                        ..Default::default()
                    };
                    ("results", output, "results")
                } else {
                    let output = pb::CrewOutput {
                        error_message: reason.clone(),
                        ..Default::default()
                    };
                    ("error message", output, "error_message")
                };
                let updated = crews
                    .update_crew_output(pb::UpdateCrewOutputRequest {
                        id: run_id,
                        crew_output: Some(output),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec![path.to_string()],
                        }),
                    })
                    .await
                    .expect("crew output update failed")
                    .into_inner();
                last.push((kind, updated.revision, reason));
            }
            last
        }));
    }
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.extend(writer.await.unwrap());
    }

    let updates = (2 * WRITERS_PER_REPLICA * UPDATES_PER_WRITER) as i64;
    let revisions_of = |kinds: &[&str]| {
        let mut revisions: Vec<i64> = outcomes
            .iter()
            .filter(|(record, ..)| kinds.contains(record))
            .map(|(_, revision, _)| *revision)
            .collect();
        revisions.sort_unstable();
        revisions
    };
    let expected: Vec<i64> = (2..=updates + 1).collect();
    assert_eq!(revisions_of(&["finding"]), expected, "finding revisions");
    assert_eq!(
        revisions_of(&["results", "error message"]),
        expected,
        "crew output revisions"
    );

    let winner = |kind: &str| {
        outcomes
            .iter()
            .filter(|(record, ..)| *record == kind)
            .max_by_key(|(_, revision, _)| *revision)
            .map(|(.., reason)| reason.clone())
            .unwrap()
    };
    let stored_finding = AnalysisServiceClient::new(replicas[0].clone())
        .get_finding(pb::GetFindingRequest { id: finding.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored_finding.revision, updates + 1);
    assert_eq!(stored_finding.status_reason, winner("finding"));

    let stored_run = CrewServiceClient::new(replicas[1].clone())
        .get_crew_output(pb::GetCrewOutputRequest { id: run.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored_run.revision, updates + 1);
    assert_eq!(stored_run.error_message, winner("error message"));
    let results = common::from_struct(&stored_run.results.unwrap());
    assert_eq!(results["last"], winner("results"));
}
