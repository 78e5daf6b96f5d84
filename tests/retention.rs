//! Retention and deletion of runs: the `keep` flag of crew outputs,
//! DeleteCrewOutput, retention passes run on demand and by the server's
//! background task.

mod common;

use std::sync::Arc;
use std::time::Duration;

use code_analyzer::pb::{self, FindingStatus};
use code_analyzer::server::ServerOptions;
use code_analyzer::storage::retention::{
    self, PassOutcome, RetentionOptions, RetentionPolicy, RetentionStats,
};
use code_analyzer::storage::{PoolOptions, Storage, now_micros};
use common::{
    Backend, TestDatabase, TestServer, assert_status, expect_error, log_entry, new_finding,
    test_options,
};
use diesel::pg::PgConnection;
use diesel::{Connection, RunQueryDsl};
use prost_types::{FieldMask, Timestamp};
use tonic::Code;

const DAY_MICROS: i64 = 86_400_000_000;

/// 2020-01-01T00:00:00Z, far older than any age the tests keep.
const OLD_TIMESTAMP: Timestamp = Timestamp {
    seconds: 1_577_836_800,
    nanos: 0,
};

/// Maximum wait for the server's background task to run a pass.
const PASS_TIMEOUT: Duration = Duration::from_secs(60);

/// Keeps logs and runs for 30 days, in batches of `batch_size` rows.
fn thirty_days(batch_size: i64) -> RetentionPolicy {
    RetentionPolicy {
        log_max_age: Some(Duration::from_secs(30 * 86_400)),
        run_max_age: Some(Duration::from_secs(30 * 86_400)),
        batch_size,
    }
}

/// Runs one retention pass through a storage handle of its own on the
/// server's database.
async fn run_pass(server: &TestServer, policy: RetentionPolicy) -> PassOutcome {
    let pool = PoolOptions {
        max_size: 2,
        connection_timeout: Duration::from_secs(10),
        ..PoolOptions::default()
    };
    let storage = Storage::open(server.database.url(), &pool).expect("cannot open storage");
    retention::run_pass(&storage, &policy)
        .await
        .expect("retention pass failed")
}

/// Runs a statement on a connection of its own.
fn execute(database: &TestDatabase, sql: &str) {
    let result = match database {
        TestDatabase::Sqlite { path, .. } => {
            let path = path.to_str().expect("temporary path is not UTF-8");
            diesel::sql_query(sql).execute(&mut common::open_sqlite(path))
        }
        TestDatabase::Postgres { url, .. } => {
            let mut connection =
                PgConnection::establish(url).expect("cannot connect to the test database");
            diesel::sql_query(sql).execute(&mut connection)
        }
    };
    result.unwrap_or_else(|error| panic!("statement {sql:?} failed: {error}"));
}

/// Moves the creation time of a crew output `days` into the past.
fn age_run(server: &TestServer, id: i64, days: i64) {
    let created_at = now_micros() - days * DAY_MICROS;
    execute(
        &server.database,
        &format!("UPDATE crew_outputs SET created_at = {created_at} WHERE id = {id}"),
    );
}

fn count(server: &TestServer, sql: &str) -> i64 {
    server
        .database
        .query_text(&format!("SELECT CAST(({sql}) AS TEXT) AS value"))
        .parse()
        .expect("count is not a number")
}

async fn create_run(server: &mut TestServer, crew_name: &str, keep: bool) -> pb::CrewOutput {
    server
        .crew
        .create_crew_output(pb::CreateCrewOutputRequest {
            crew_name: crew_name.to_string(),
            output_type: "review".to_string(),
            keep,
            ..Default::default()
        })
        .await
        .expect("CreateCrewOutput failed")
        .into_inner()
}

async fn get_run(server: &mut TestServer, id: i64) -> Result<pb::CrewOutput, tonic::Status> {
    server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest { id })
        .await
        .map(tonic::Response::into_inner)
}

async fn set_keep(server: &mut TestServer, id: i64, keep: bool, paths: &[&str]) -> pb::CrewOutput {
    server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id,
            crew_output: Some(pb::CrewOutput {
                keep,
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|path| path.to_string()).collect(),
            }),
        })
        .await
        .expect("UpdateCrewOutput failed")
        .into_inner()
}

async fn delete_run(
    server: &mut TestServer,
    id: i64,
    force: bool,
) -> Result<tonic::Response<pb::DeleteCrewOutputResponse>, tonic::Status> {
    server
        .crew
        .delete_crew_output(pb::DeleteCrewOutputRequest { id, force })
        .await
}

async fn record_fix(server: &mut TestServer, crew_output_id: i64, finding_ids: Vec<i64>) -> i64 {
    server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id,
            file_path: "src/app.py".to_string(),
            description: "Read the password from the environment".to_string(),
            finding_ids,
            ..Default::default()
        })
        .await
        .expect("RecordFix failed")
        .into_inner()
        .id
}

/// Ingests `count` entries of a run, stamped now, with ids `PREFIX-N`.
async fn ingest_run_logs(server: &mut TestServer, crew_output_id: i64, prefix: &str, count: usize) {
    let entries = (0..count)
        .map(|index| pb::NewLogEntry {
            crew_output_id,
            ..log_entry(&format!("{prefix}-{index}"), "INFO", "step done")
        })
        .collect();
    let response = server
        .ingest(vec![entries])
        .await
        .expect("IngestLogs failed");
    assert_eq!(response.accepted_count, count as i64);
}

/// Creates a run of `crew_name` with two findings, a fix linked to both,
/// and three log entries, and returns the ids of the run, findings and fix.
async fn run_with_records(server: &mut TestServer, crew_name: &str) -> (i64, Vec<i64>, i64) {
    let run = create_run(server, crew_name, false).await.id;
    let findings = server
        .record_findings(
            run,
            vec![
                new_finding("src/app.py", "S105", "Possible hardcoded password"),
                new_finding("src/app.py", "B007", "Loop control variable not used"),
            ],
        )
        .await;
    let finding_ids: Vec<i64> = findings.iter().map(|finding| finding.id).collect();
    let fix = record_fix(server, run, finding_ids.clone()).await;
    ingest_run_logs(server, run, &format!("{crew_name}-{run}"), 3).await;
    (run, finding_ids, fix)
}

async fn get_finding(server: &mut TestServer, id: i64) -> Result<pb::Finding, tonic::Status> {
    server
        .analysis
        .get_finding(pb::GetFindingRequest { id })
        .await
        .map(tonic::Response::into_inner)
}

async fn update_finding(server: &mut TestServer, id: i64, status: FindingStatus, reason: &str) {
    server
        .analysis
        .update_finding(pb::UpdateFindingRequest {
            id,
            status: status as i32,
            reason: reason.to_string(),
            dismiss_reason: if status == FindingStatus::Dismissed {
                pb::DismissReason::UsedInTests as i32
            } else {
                0
            },
        })
        .await
        .expect("UpdateFinding failed");
}

async fn run_log_count(server: &mut TestServer, crew_output_id: i64) -> i64 {
    server
        .logs
        .query_logs(pb::QueryLogsRequest {
            crew_output_id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("QueryLogs failed")
        .into_inner()
        .total_size
}

async fn create_with_keep(mut server: TestServer) {
    let kept = create_run(&mut server, "review-crew", true).await;
    let plain = create_run(&mut server, "review-crew", false).await;

    assert!(kept.keep);
    assert!(!plain.keep);
    assert!(get_run(&mut server, kept.id).await.unwrap().keep);
}

async fn update_keep_by_mask(mut server: TestServer) {
    let run = create_run(&mut server, "review-crew", false).await;

    let kept = set_keep(&mut server, run.id, true, &["keep"]).await;
    assert!(kept.keep);
    assert_eq!(kept.revision, 2);

    // Without a mask, false counts as unset and changes nothing.
    let unchanged = set_keep(&mut server, run.id, false, &[]).await;
    assert!(unchanged.keep);
    assert_eq!(unchanged.revision, 2);

    let cleared = set_keep(&mut server, run.id, false, &["keep"]).await;
    assert!(!cleared.keep);
    assert_eq!(cleared.revision, 3);
    assert!(!get_run(&mut server, run.id).await.unwrap().keep);
}

async fn update_rejects_unknown_path(mut server: TestServer) {
    let run = create_run(&mut server, "review-crew", false).await;

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: run.id,
                crew_output: Some(pb::CrewOutput::default()),
                update_mask: Some(FieldMask {
                    paths: vec!["kept".to_string()],
                }),
            })
            .await,
    );

    assert_status(
        &status,
        Code::InvalidArgument,
        "update_mask: path \"kept\" is not one of status, results, output_type, error_message, keep",
    );
}

async fn delete_removes_run_and_records(mut server: TestServer) {
    let (run, finding_ids, fix) = run_with_records(&mut server, "review-crew").await;
    let (other, other_findings, other_fix) = run_with_records(&mut server, "review-crew").await;

    let response = delete_run(&mut server, run, false)
        .await
        .expect("DeleteCrewOutput failed")
        .into_inner();

    assert_eq!(
        response.crew_output.as_ref().map(|output| output.id),
        Some(run)
    );
    assert_eq!(response.deleted_finding_count, 2);
    assert_eq!(response.deleted_fix_count, 1);
    assert_eq!(response.deleted_fix_link_count, 2);
    assert_eq!(response.deleted_log_entry_count, 3);
    assert_status(
        &get_run(&mut server, run).await.unwrap_err(),
        Code::NotFound,
        &format!("crew output {run} not found"),
    );
    for id in finding_ids {
        assert_status(
            &get_finding(&mut server, id).await.unwrap_err(),
            Code::NotFound,
            &format!("finding {id} not found"),
        );
    }
    let fix_status = expect_error(server.fixes.get_fix(pb::GetFixRequest { id: fix }).await);
    assert_eq!(fix_status.code(), Code::NotFound);
    assert_eq!(run_log_count(&mut server, run).await, 0);
    assert_eq!(
        count(
            &server,
            &format!("SELECT COUNT(*) FROM fix_findings WHERE fix_id = {fix}")
        ),
        0
    );
    assert_eq!(
        count(
            &server,
            &format!(
                "SELECT COUNT(*) FROM audit_events \
                 WHERE action = 'crew_output.delete' AND record_id = {run}"
            )
        ),
        1
    );

    // The other run keeps everything.
    assert!(get_run(&mut server, other).await.is_ok());
    for id in other_findings {
        assert!(get_finding(&mut server, id).await.is_ok());
    }
    let kept_fix = server
        .fixes
        .get_fix(pb::GetFixRequest { id: other_fix })
        .await
        .expect("GetFix failed")
        .into_inner();
    assert_eq!(kept_fix.finding_ids.len(), 2);
    assert_eq!(run_log_count(&mut server, other).await, 3);
}

async fn delete_unknown_not_found(mut server: TestServer) {
    let status = expect_error(delete_run(&mut server, 999, false).await);

    assert_status(&status, Code::NotFound, "crew output 999 not found");
}

async fn delete_rejects_invalid_id(mut server: TestServer) {
    let status = expect_error(delete_run(&mut server, 0, false).await);

    assert_status(
        &status,
        Code::InvalidArgument,
        "id: must be a positive id, got 0",
    );
}

async fn delete_kept_run_needs_force(mut server: TestServer) {
    let run = create_run(&mut server, "review-crew", true).await;
    server
        .record_findings(run.id, vec![new_finding("src/app.py", "S105", "password")])
        .await;

    let status = expect_error(delete_run(&mut server, run.id, false).await);
    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!(
            "crew output {} is marked keep; set force to delete it",
            run.id
        ),
    );
    assert!(get_run(&mut server, run.id).await.is_ok());

    let response = delete_run(&mut server, run.id, true)
        .await
        .expect("forced DeleteCrewOutput failed")
        .into_inner();
    assert!(response.crew_output.expect("no crew output").keep);
    assert_eq!(response.deleted_finding_count, 1);
    assert_eq!(
        get_run(&mut server, run.id).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn pass_deletes_old_logs_only(mut server: TestServer) {
    let old: Vec<pb::NewLogEntry> = (0..3)
        .map(|index| pb::NewLogEntry {
            timestamp: Some(OLD_TIMESTAMP),
            ..log_entry(&format!("old-{index}"), "INFO", "old entry")
        })
        .collect();
    let new: Vec<pb::NewLogEntry> = (0..2)
        .map(|index| log_entry(&format!("new-{index}"), "INFO", "new entry"))
        .collect();
    server
        .ingest(vec![old, new])
        .await
        .expect("IngestLogs failed");

    let outcome = run_pass(
        &server,
        RetentionPolicy {
            log_max_age: Some(Duration::from_secs(30 * 86_400)),
            ..RetentionPolicy::default()
        },
    )
    .await;

    assert_eq!(outcome.log_entries_deleted, 3);
    assert_eq!(outcome.crew_outputs_deleted, 0);
    let remaining = server
        .logs
        .query_logs(pb::QueryLogsRequest::default())
        .await
        .expect("QueryLogs failed")
        .into_inner();
    let mut ids: Vec<String> = remaining
        .entries
        .iter()
        .map(|entry| entry.entry_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["new-0", "new-1"]);
}

async fn pass_deletes_old_runs_with_records(mut server: TestServer) {
    let (old, old_findings, old_fix) = run_with_records(&mut server, "review-crew").await;
    let (recent, recent_findings, _) = run_with_records(&mut server, "review-crew").await;
    age_run(&server, old, 40);
    age_run(&server, recent, 20);

    let outcome = run_pass(&server, thirty_days(1_000)).await;

    assert_eq!(outcome.crew_outputs_deleted, 1);
    assert_eq!(outcome.findings_deleted, 2);
    assert_eq!(outcome.fixes_deleted, 1);
    assert_eq!(outcome.log_entries_deleted, 3);
    assert_eq!(outcome.expired_runs_kept, 0);
    assert_eq!(
        get_run(&mut server, old).await.unwrap_err().code(),
        Code::NotFound
    );
    for id in old_findings {
        assert_eq!(
            get_finding(&mut server, id).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    assert_eq!(
        count(
            &server,
            &format!("SELECT COUNT(*) FROM error_handling_results WHERE id = {old_fix}")
        ),
        0
    );
    assert_eq!(
        count(
            &server,
            &format!("SELECT COUNT(*) FROM fix_findings WHERE fix_id = {old_fix}")
        ),
        0
    );
    assert_eq!(run_log_count(&mut server, old).await, 0);
    assert_eq!(
        count(
            &server,
            &format!(
                "SELECT COUNT(*) FROM audit_events \
                 WHERE action = 'crew_output.expire' AND record_id = {old} \
                 AND actor = 'retention'"
            )
        ),
        1
    );

    assert!(get_run(&mut server, recent).await.is_ok());
    for id in recent_findings {
        assert!(get_finding(&mut server, id).await.is_ok());
    }
    assert_eq!(run_log_count(&mut server, recent).await, 3);
}

async fn pass_spares_kept_run(mut server: TestServer) {
    let kept = create_run(&mut server, "review-crew", true).await.id;
    server
        .record_findings(kept, vec![new_finding("src/app.py", "S105", "password")])
        .await;
    let marked_later = create_run(&mut server, "review-crew", false).await.id;
    set_keep(&mut server, marked_later, true, &["keep"]).await;
    age_run(&server, kept, 400);
    age_run(&server, marked_later, 400);

    let outcome = run_pass(&server, thirty_days(1_000)).await;

    assert_eq!(outcome.crew_outputs_deleted, 0);
    assert_eq!(outcome.expired_runs_kept, 2);
    assert!(get_run(&mut server, kept).await.unwrap().keep);
    assert!(get_run(&mut server, marked_later).await.unwrap().keep);
    assert_eq!(
        count(
            &server,
            &format!("SELECT COUNT(*) FROM code_analysis_results WHERE crew_output_id = {kept}")
        ),
        1
    );
}

async fn pass_spares_run_with_open_triage(mut server: TestServer) {
    let password = || new_finding("src/app.py", "S105", "Possible hardcoded password");
    let unused = || new_finding("src/app.py", "B007", "Loop control variable not used");

    // The confirmed finding of the first run is the decision the later run
    // starts from; the dismissed one of the second run is resolved.
    let confirmed_run = create_run(&mut server, "review-crew", false).await.id;
    let confirmed = server
        .record_findings(confirmed_run, vec![password()])
        .await[0]
        .id;
    update_finding(&mut server, confirmed, FindingStatus::Confirmed, "real").await;
    let dismissed_run = create_run(&mut server, "review-crew", false).await.id;
    let dismissed = server.record_findings(dismissed_run, vec![unused()]).await[0].id;
    update_finding(
        &mut server,
        dismissed,
        FindingStatus::Dismissed,
        "test code",
    )
    .await;
    let later_run = create_run(&mut server, "review-crew", false).await.id;
    let carried = server.record_findings(later_run, vec![password()]).await[0].clone();
    assert_eq!(carried.status, FindingStatus::Confirmed as i32);
    age_run(&server, confirmed_run, 40);
    age_run(&server, dismissed_run, 40);

    let outcome = run_pass(&server, thirty_days(1_000)).await;

    assert_eq!(outcome.crew_outputs_deleted, 1);
    assert_eq!(outcome.expired_runs_kept, 1);
    assert_eq!(
        get_finding(&mut server, confirmed).await.unwrap().status,
        FindingStatus::Confirmed as i32
    );
    assert_eq!(
        get_run(&mut server, dismissed_run)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The dismissal outlives its run: a new finding of the crew starts dismissed.
    let next = server.record_findings(later_run, vec![unused()]).await[0].clone();
    assert_eq!(next.status, FindingStatus::Dismissed as i32);
    assert_eq!(next.status_reason, "test code");
}

async fn pass_deletes_across_batches(mut server: TestServer) {
    let old_logs: Vec<pb::NewLogEntry> = (0..35)
        .map(|index| pb::NewLogEntry {
            timestamp: Some(OLD_TIMESTAMP),
            ..log_entry(&format!("old-{index}"), "INFO", "old entry")
        })
        .collect();
    server
        .ingest(vec![old_logs])
        .await
        .expect("IngestLogs failed");
    let large = create_run(&mut server, "review-crew", false).await.id;
    let findings = (0..25)
        .map(|index| new_finding("src/app.py", "E501", &format!("line {index} too long")))
        .collect();
    server.record_findings(large, findings).await;
    ingest_run_logs(&mut server, large, "large", 12).await;
    let mut small = Vec::new();
    for _ in 0..14 {
        let run = create_run(&mut server, "review-crew", false).await.id;
        age_run(&server, run, 40);
        small.push(run);
    }
    age_run(&server, large, 40);

    let outcome = run_pass(&server, thirty_days(10)).await;

    assert_eq!(outcome.log_entries_deleted, 35 + 12);
    assert_eq!(outcome.crew_outputs_deleted, 15);
    assert_eq!(outcome.findings_deleted, 25);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM crew_outputs"), 0);
    assert_eq!(
        count(&server, "SELECT COUNT(*) FROM code_analysis_results"),
        0
    );
    assert_eq!(count(&server, "SELECT COUNT(*) FROM log_entries"), 0);
    assert_eq!(
        count(
            &server,
            "SELECT COUNT(*) FROM audit_events WHERE action = 'crew_output.expire'"
        ),
        15
    );
}

/// Server options whose retention task deletes log entries older than 30
/// days, with a pass every 50 ms, and counts them in `stats`.
fn background_options(stats: Arc<RetentionStats>) -> ServerOptions {
    ServerOptions {
        retention: RetentionOptions {
            policy: RetentionPolicy {
                log_max_age: Some(Duration::from_secs(30 * 86_400)),
                ..RetentionPolicy::default()
            },
            interval: Duration::from_millis(50),
            first_pass_delay: Duration::from_millis(10),
            stats,
        },
        ..test_options()
    }
}

/// Starts a server whose own task deletes old log entries, and waits for
/// its counters to show the deletion.
async fn background_task_deletes_old_logs(backend: Backend) {
    let stats = Arc::new(RetentionStats::default());
    let options = background_options(stats.clone());
    let Some(mut server) = TestServer::start_with(backend, options).await else {
        return;
    };
    let old: Vec<pb::NewLogEntry> = (0..3)
        .map(|index| pb::NewLogEntry {
            timestamp: Some(OLD_TIMESTAMP),
            ..log_entry(&format!("old-{index}"), "INFO", "old entry")
        })
        .collect();
    let new = vec![log_entry("new-0", "INFO", "new entry")];
    server
        .ingest(vec![old, new])
        .await
        .expect("IngestLogs failed");

    let waited = tokio::time::timeout(PASS_TIMEOUT, async {
        while stats.snapshot().log_entries_deleted < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    assert!(
        waited.is_ok(),
        "no pass deleted the old entries: {:?}",
        stats.snapshot()
    );
    let counts = stats.snapshot();
    assert_eq!(counts.log_entries_deleted, 3);
    assert_eq!(counts.crew_outputs_deleted, 0);
    assert_eq!(counts.failed_passes, 0);
    assert!(counts.passes >= 1);
    let remaining = server
        .logs
        .query_logs(pb::QueryLogsRequest::default())
        .await
        .expect("QueryLogs failed")
        .into_inner();
    let ids: Vec<&str> = remaining
        .entries
        .iter()
        .map(|entry| entry.entry_id.as_str())
        .collect();
    assert_eq!(ids, ["new-0"]);
}

/// The background task test on each backend. It starts its own server,
/// because the test needs the counters of the options it starts with.
mod background_task {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        tokio::time::timeout(
            common::TEST_TIMEOUT,
            background_task_deletes_old_logs(Backend::Sqlite),
        )
        .await
        .expect("test timed out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        tokio::time::timeout(
            common::TEST_TIMEOUT,
            background_task_deletes_old_logs(Backend::Postgres),
        )
        .await
        .expect("test timed out");
    }
}

backend_tests!(
    create_with_keep,
    update_keep_by_mask,
    update_rejects_unknown_path,
    delete_removes_run_and_records,
    delete_unknown_not_found,
    delete_rejects_invalid_id,
    delete_kept_run_needs_force,
    pass_deletes_old_logs_only,
    pass_deletes_old_runs_with_records,
    pass_spares_kept_run,
    pass_spares_run_with_open_triage,
    pass_deletes_across_batches,
);
