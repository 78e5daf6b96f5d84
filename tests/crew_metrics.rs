//! ListCrews, GetCrew and GetStats against a real server on both backends.

mod common;

use std::time::Duration;

use code_analyzer::pb::stats_service_client::StatsServiceClient;
use code_analyzer::pb::task_service_client::TaskServiceClient;
use code_analyzer::pb::{self, CrewOutputStatus};
use common::{TestServer, assert_status, expect_error};
use tonic::Code;

/// Creates a run of `crew`, moves it through `statuses`, and records
/// `findings` findings on it.
async fn record_run(
    server: &mut TestServer,
    crew: &str,
    statuses: &[CrewOutputStatus],
    findings: usize,
) -> pb::CrewOutput {
    let mut output = server.create_crew_output(crew).await;
    for status in statuses {
        tokio::time::sleep(Duration::from_millis(5)).await;
        output = server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: output.id,
                crew_output: Some(pb::CrewOutput {
                    status: *status as i32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".to_string()],
                }),
            })
            .await
            .unwrap()
            .into_inner();
    }
    if findings > 0 {
        let batch = (0..findings)
            .map(|index| {
                common::new_finding(&format!("src/file_{index}.py"), "E501", "line too long")
            })
            .collect();
        server.record_findings(output.id, batch).await;
    }
    output
}

fn count(counts: &[pb::NamedCount], name: &str) -> i64 {
    counts
        .iter()
        .find(|entry| entry.name == name)
        .map(|entry| entry.count)
        .unwrap_or(0)
}

async fn crew_metrics_cover_window(mut server: TestServer) {
    use CrewOutputStatus::*;
    record_run(&mut server, "reviewer", &[Running, Succeeded], 4).await;
    record_run(&mut server, "reviewer", &[Running, Succeeded], 2).await;
    record_run(&mut server, "reviewer", &[Running, Failed], 0).await;
    record_run(&mut server, "reviewer", &[Running], 0).await;
    let last = record_run(&mut server, "reviewer", &[], 0).await;

    let crew = server
        .crew
        .get_crew(pb::GetCrewRequest {
            crew_name: "reviewer".to_string(),
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(crew.last_run.unwrap().id, last.id);
    assert_eq!(crew.runs_in_progress, 2);
    assert_eq!(crew.runs_by_status["CREW_OUTPUT_STATUS_SUCCEEDED"], 2);
    assert_eq!(crew.runs_by_status["CREW_OUTPUT_STATUS_FAILED"], 1);
    assert_eq!(crew.runs_by_status["CREW_OUTPUT_STATUS_RUNNING"], 1);
    assert_eq!(crew.runs_by_status["CREW_OUTPUT_STATUS_PENDING"], 1);
    assert!(
        (crew.success_rate - 2.0 / 3.0).abs() < 1e-9,
        "success rate {}",
        crew.success_rate
    );
    assert!(crew.duration_p50_ms > 0.0);
    assert!(crew.duration_p95_ms >= crew.duration_p50_ms);
    assert!(
        (crew.findings_per_run - 6.0 / 5.0).abs() < 1e-9,
        "findings per run {}",
        crew.findings_per_run
    );
    assert_eq!(crew.window.unwrap().seconds, 7 * 24 * 3_600);
}

async fn task_runs_last_from_their_lease(server: TestServer) {
    let task = server.enqueue_and_claim("review").await;
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let leased_at = task.leased_at.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let done = tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id,
            lease_token: task.lease_token,
            result: Some(pb::TaskResult {
                crew_name: "queued".to_string(),
                output_type: "review".to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let output = done.crew_output.unwrap();
    assert_eq!(output.started_at, Some(leased_at));
    assert_eq!(done.task.unwrap().leased_at, Some(leased_at));

    let crew = server
        .crew
        .clone()
        .get_crew(pb::GetCrewRequest {
            crew_name: "queued".to_string(),
            window: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        crew.duration_p50_ms >= 30.0,
        "p50 {} ms",
        crew.duration_p50_ms
    );
}

async fn get_crew_rejects_unknown_and_bad_window(server: TestServer) {
    let mut crews = server.crew.clone();
    let status = expect_error(
        crews
            .get_crew(pb::GetCrewRequest {
                crew_name: "nobody".to_string(),
                window: None,
            })
            .await,
    );
    assert_status(&status, Code::NotFound, "crew \"nobody\" not found");
    let status = expect_error(
        crews
            .get_crew(pb::GetCrewRequest {
                crew_name: "nobody".to_string(),
                window: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "window: is 1000 ms, outside the range",
    );
}

async fn list_crews_pages_by_name(mut server: TestServer) {
    for crew in ["delta", "alpha", "charlie", "bravo", "alpha"] {
        record_run(&mut server, crew, &[], 0).await;
    }
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .crew
            .list_crews(pb::ListCrewsRequest {
                page_size: 3,
                page_token,
                window: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 4);
        names.extend(page.crews.into_iter().map(|crew| crew.crew_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, ["alpha", "bravo", "charlie", "delta"]);
}

async fn stats_count_everything(mut server: TestServer) {
    let output = record_run(&mut server, "ruff", &[], 0).await;
    let mut findings = vec![
        common::new_finding("a.py", "S101", "assert used"),
        common::new_finding("b.py", "S101", "assert used"),
    ];
    findings[0].priority = pb::Priority::High as i32;
    server.record_findings(output.id, findings).await;
    server
        .ingest(vec![vec![
            common::log_entry("s:1", "INFO", "started"),
            common::log_entry("s:2", "INFO2", "still going"),
            common::log_entry("s:3", "warning", "slow"),
        ]])
        .await
        .unwrap();

    let mut tasks = TaskServiceClient::new(server.channel.clone());
    for queue in ["lint", "lint", "fix"] {
        tasks
            .enqueue_task(pb::EnqueueTaskRequest {
                queue: queue.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    tasks
        .claim_tasks(pb::ClaimTasksRequest {
            queue: "lint".to_string(),
            worker: "w1".to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    let stats = StatsServiceClient::new(server.channel.clone())
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.crew_outputs, 1);
    assert_eq!(stats.findings, 2);
    assert_eq!(stats.log_entries, 3);
    assert_eq!(stats.fixes, 0);
    assert_eq!(stats.tasks, 3);
    assert_eq!(
        count(&stats.tasks_by_queue_and_state, "lint/TASK_STATE_QUEUED"),
        1
    );
    assert_eq!(
        count(&stats.tasks_by_queue_and_state, "lint/TASK_STATE_LEASED"),
        1
    );
    assert_eq!(
        count(&stats.tasks_by_queue_and_state, "fix/TASK_STATE_QUEUED"),
        1
    );
    assert_eq!(count(&stats.findings_by_priority, "PRIORITY_HIGH"), 1);
    assert_eq!(count(&stats.findings_by_priority, "PRIORITY_MEDIUM"), 1);
    assert_eq!(count(&stats.findings_by_status, "FINDING_STATUS_OPEN"), 2);
    assert_eq!(count(&stats.log_entries_by_severity, "SEVERITY_INFO"), 2);
    assert_eq!(count(&stats.log_entries_by_severity, "SEVERITY_WARN"), 1);
    let rate = stats.log_entries_rate.unwrap();
    assert!((rate.last_minute_per_second - 3.0 / 60.0).abs() < 1e-9);
    assert!((rate.last_hour_per_second - 3.0 / 3_600.0).abs() < 1e-9);
    assert!((stats.findings_rate.unwrap().last_minute_per_second - 2.0 / 60.0).abs() < 1e-9);
}

backend_tests! {
    crew_metrics_cover_window,
    task_runs_last_from_their_lease,
    get_crew_rejects_unknown_and_bad_window,
    list_crews_pages_by_name,
    stats_count_everything,
}
