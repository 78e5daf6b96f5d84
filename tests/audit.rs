//! The audit trail on both backends: every change writes an event in its
//! own transaction, events list with filters and paging, the database
//! rejects changing or deleting an event, and an event tampered with or
//! removed once those guards are dropped is found by VerifyAuditTrail.

mod common;

use code_analyzer::pb;
use code_analyzer::pb::audit_service_client::AuditServiceClient;
use code_analyzer::pb::task_service_client::TaskServiceClient;
use code_analyzer::pb::{CrewOutputStatus, FindingStatus, FixStatus};
use common::{TestDatabase, TestServer, assert_status, expect_error, new_finding};
use tonic::Code;
use tonic::transport::Channel;

fn audit(server: &TestServer) -> AuditServiceClient<Channel> {
    AuditServiceClient::new(server.channel.clone())
}

async fn events(
    server: &TestServer,
    request: pb::ListAuditEventsRequest,
) -> pb::ListAuditEventsResponse {
    audit(server)
        .list_audit_events(request)
        .await
        .unwrap()
        .into_inner()
}

async fn all_actions(server: &TestServer) -> Vec<String> {
    let mut listed = events(
        server,
        pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        },
    )
    .await
    .events;
    listed.reverse();
    listed.into_iter().map(|event| event.action).collect()
}

async fn set_status(
    server: &mut TestServer,
    id: i64,
    status: CrewOutputStatus,
) -> Result<(), tonic::Status> {
    server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id,
            crew_output: Some(pb::CrewOutput {
                status: status as i32,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .map(|_| ())
}

/// Makes one change of every kind.
async fn change_everything(server: &mut TestServer) -> (i64, i64, i64) {
    let run = server.create_crew_output("auditor").await;
    set_status(server, run.id, CrewOutputStatus::Running)
        .await
        .unwrap();
    let finding = server
        .record_findings(
            run.id,
            vec![common::new_finding("a.py", "S105", "password")],
        )
        .await
        .remove(0);
    server
        .analysis
        .update_finding(pb::UpdateFindingRequest {
            id: finding.id,
            status: FindingStatus::Dismissed as i32,
            reason: "used in tests".to_string(),
            dismiss_reason: pb::DismissReason::UsedInTests as i32,
        })
        .await
        .unwrap();
    let fix = server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id: run.id,
            file_path: "a.py".to_string(),
            finding_ids: vec![finding.id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            status: FixStatus::Applied as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let claimed = server.enqueue_and_claim("audit").await;
    TaskServiceClient::new(server.channel.clone())
        .complete_task(pb::CompleteTaskRequest {
            task_id: claimed.id,
            lease_token: claimed.lease_token,
            result: None,
        })
        .await
        .unwrap();
    (run.id, finding.id, fix.id)
}

async fn changes_write_events(mut server: TestServer) {
    let (run, finding, _) = change_everything(&mut server).await;
    assert_eq!(
        all_actions(&server).await,
        [
            "crew_output.create",
            "crew_output.update",
            "findings.record",
            "finding.update",
            "fix.create",
            "fix.update",
            "task.enqueue",
            "task.claim",
            "task.complete",
        ]
    );

    let update = events(
        &server,
        pb::ListAuditEventsRequest {
            record_type: "finding".to_string(),
            record_id: finding,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(update.total_size, 1);
    let event = &update.events[0];
    assert_eq!(event.actor, "anonymous");
    let before: serde_json::Value = serde_json::from_str(&event.before).unwrap();
    let after: serde_json::Value = serde_json::from_str(&event.after).unwrap();
    assert_eq!(before["status"], FindingStatus::Open as i32);
    assert_eq!(after["status"], FindingStatus::Dismissed as i32);
    assert_eq!(after["status_reason"], "used in tests");
    assert_eq!(event.hash.len(), 64);

    let run_events = events(
        &server,
        pb::ListAuditEventsRequest {
            record_type: "crew_output".to_string(),
            record_id: run,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        run_events.total_size, 3,
        "create, update and the findings batch"
    );
}

async fn task_changes_write_events(server: TestServer) {
    let mut tasks = TaskServiceClient::new(server.channel.clone());
    let enqueue = pb::EnqueueTaskRequest {
        queue: "ops".to_string(),
        ..Default::default()
    };
    let mut enqueue_one = async || {
        let response = tasks.enqueue_task(enqueue.clone()).await.unwrap();
        response.into_inner().task.unwrap()
    };
    let completed = enqueue_one().await;
    let cancelled = enqueue_one().await;
    let claim = |seconds: i64, nanos: i32| pb::ClaimTasksRequest {
        queue: "ops".to_string(),
        worker: "w1".to_string(),
        max_tasks: 2,
        lease: Some(prost_types::Duration { seconds, nanos }),
    };
    // The first leases run out, and the next claim hands both tasks out again.
    tasks.claim_tasks(claim(0, 100_000_000)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let claimed = tasks
        .claim_tasks(claim(60, 0))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(claimed.len(), 2);
    let token = |id: i64| {
        claimed
            .iter()
            .find(|task| task.id == id)
            .unwrap()
            .lease_token
            .clone()
    };
    tasks
        .heartbeat_task(pb::HeartbeatTaskRequest {
            task_id: completed.id,
            lease_token: token(completed.id),
            lease: None,
        })
        .await
        .unwrap();
    tasks
        .fail_task(pb::FailTaskRequest {
            task_id: cancelled.id,
            lease_token: token(cancelled.id),
            error: "crashed".to_string(),
            permanent: true,
        })
        .await
        .unwrap();
    tasks
        .retry_task(pb::RetryTaskRequest { id: cancelled.id })
        .await
        .unwrap();
    tasks
        .cancel_task(pb::CancelTaskRequest { id: cancelled.id })
        .await
        .unwrap();
    tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: completed.id,
            lease_token: token(completed.id),
            result: Some(pb::TaskResult {
                crew_name: "auditor".to_string(),
                output_type: "review".to_string(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    let actions_of = |id: i64| {
        let server = &server;
        async move {
            let mut listed = events(
                server,
                pb::ListAuditEventsRequest {
                    record_type: "task".to_string(),
                    record_id: id,
                    ..Default::default()
                },
            )
            .await
            .events;
            listed.reverse();
            listed
                .into_iter()
                .map(|event| event.action)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        actions_of(completed.id).await,
        [
            "task.enqueue",
            "task.claim",
            "task.lease_expired",
            "task.claim",
            "task.heartbeat",
            "task.complete",
        ]
    );
    assert_eq!(
        actions_of(cancelled.id).await,
        [
            "task.enqueue",
            "task.claim",
            "task.lease_expired",
            "task.claim",
            "task.fail",
            "task.retry",
            "task.cancel",
        ]
    );
    // The completion's crew output is recorded with its own event.
    let all = all_actions(&server).await;
    assert_eq!(
        all.iter()
            .filter(|action| *action == "crew_output.import")
            .count(),
        1
    );
}

async fn failed_change_writes_no_event(mut server: TestServer) {
    let run = server.create_crew_output("auditor").await;
    set_status(&mut server, run.id, CrewOutputStatus::Succeeded)
        .await
        .unwrap();
    let status = set_status(&mut server, run.id, CrewOutputStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        all_actions(&server).await,
        ["crew_output.create", "crew_output.update"]
    );
}

async fn resolved_finding_gets_own_event(mut server: TestServer) {
    let first = server.create_crew_output("resolver").await;
    let stored = server
        .record_findings(
            first.id,
            vec![
                new_finding("app.py", "S105", "hardcoded password"),
                new_finding("app.py", "E501", "line too long"),
            ],
        )
        .await;
    set_status(&mut server, first.id, CrewOutputStatus::Succeeded)
        .await
        .unwrap();
    let second = server.create_crew_output("resolver").await;
    server
        .record_findings(
            second.id,
            vec![new_finding("app.py", "S105", "hardcoded password")],
        )
        .await;
    set_status(&mut server, second.id, CrewOutputStatus::Succeeded)
        .await
        .unwrap();

    let resolved = stored.iter().find(|f| f.rule_id == "E501").unwrap();
    let listed = events(
        &server,
        pb::ListAuditEventsRequest {
            record_type: "finding".to_string(),
            record_id: resolved.id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.total_size, 1);
    let event = &listed.events[0];
    assert_eq!(event.action, "finding.fixed");
    let before: serde_json::Value = serde_json::from_str(&event.before).unwrap();
    let after: serde_json::Value = serde_json::from_str(&event.after).unwrap();
    assert_eq!(before["status"], "FINDING_STATUS_OPEN");
    assert_eq!(after["status"], "FINDING_STATUS_FIXED");
    assert_eq!(
        after["status_reason"],
        format!("not reported by run {}", second.id)
    );
    assert!(verify(&server).await.intact);
}

async fn list_filters_and_pages(mut server: TestServer) {
    change_everything(&mut server).await;
    let by_action = events(
        &server,
        pb::ListAuditEventsRequest {
            action: "task.claim".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_action.total_size, 1);
    let by_actor = events(
        &server,
        pb::ListAuditEventsRequest {
            actor: "someone-else".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_actor.total_size, 0);
    let anonymous = events(
        &server,
        pb::ListAuditEventsRequest {
            actor: "anonymous".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        anonymous.total_size, 9,
        "no tokens, so every event is anonymous"
    );
    let past = events(
        &server,
        pb::ListAuditEventsRequest {
            occurred_before: Some(common::time(1)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(past.total_size, 0);
    let until_now = events(
        &server,
        pb::ListAuditEventsRequest {
            occurred_before: Some(common::time(100 * 365 * 24 * 3_600)),
            action: "crew_output.create".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(until_now.total_size, 1);
    let future = events(
        &server,
        pb::ListAuditEventsRequest {
            occurred_after: Some(common::time(100 * 365 * 24 * 3_600)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(future.total_size, 0);

    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = events(
            &server,
            pb::ListAuditEventsRequest {
                page_size: 4,
                page_token,
                ..Default::default()
            },
        )
        .await;
        ids.extend(page.events.iter().map(|event| event.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids.len(), 9);
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );

    let status = expect_error(
        audit(&server)
            .list_audit_events(pb::ListAuditEventsRequest {
                record_id: 1,
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "record_type: is required with record_id",
    );
}

async fn verify(server: &TestServer) -> pb::VerifyAuditTrailResponse {
    audit(server)
        .verify_audit_trail(pb::VerifyAuditTrailRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Runs one statement on a connection of its own and returns the
/// database's error text, if any.
fn try_execute(database: &TestDatabase, sql: &str) -> Result<(), String> {
    use diesel::{Connection, RunQueryDsl};
    let result = match database {
        TestDatabase::Sqlite { path, .. } => {
            diesel::sql_query(sql).execute(&mut common::open_sqlite(path.to_str().unwrap()))
        }
        TestDatabase::Postgres { url, .. } => {
            diesel::sql_query(sql).execute(&mut diesel::PgConnection::establish(url).unwrap())
        }
    };
    result.map(drop).map_err(|error| error.to_string())
}

/// Removes the triggers that keep audit events append-only, as someone
/// with the rights to change the schema could.
fn drop_append_only_triggers(database: &TestDatabase) {
    let on_table = match database {
        TestDatabase::Sqlite { .. } => "",
        TestDatabase::Postgres { .. } => " ON audit_events",
    };
    database.execute(&format!(
        "DROP TRIGGER audit_events_no_update{on_table}; \
         DROP TRIGGER audit_events_no_delete{on_table};"
    ));
}

async fn database_rejects_changed_events(mut server: TestServer) {
    change_everything(&mut server).await;
    for sql in [
        "UPDATE audit_events SET actor = 'someone else' WHERE id = 2",
        "DELETE FROM audit_events WHERE id = 2",
    ] {
        let error = try_execute(&server.database, sql).unwrap_err();
        assert!(
            error.contains("audit events are append-only"),
            "{sql}: {error}"
        );
    }
    if let TestDatabase::Postgres { .. } = server.database {
        let error = try_execute(&server.database, "TRUNCATE audit_events").unwrap_err();
        assert!(error.contains("audit events are append-only"), "{error}");
    }
    assert!(verify(&server).await.intact);
}

async fn tampered_event_is_found(mut server: TestServer) {
    change_everything(&mut server).await;
    let intact = verify(&server).await;
    assert!(intact.intact);
    assert_eq!(intact.checked_count, 9);
    assert_eq!(intact.first_broken_event_id, 0);

    drop_append_only_triggers(&server.database);
    server.database.query_text(
        "UPDATE audit_events SET after = '{\"status\": 99}' WHERE id = 4 \
         RETURNING CAST(id AS TEXT) AS value",
    );
    let tampered = verify(&server).await;
    assert!(!tampered.intact);
    assert_eq!(tampered.first_broken_event_id, 4);
    assert_eq!(tampered.checked_count, 3);
    assert_eq!(tampered.reason, "its hash does not match its fields");
}

async fn removed_event_is_found(mut server: TestServer) {
    change_everything(&mut server).await;
    drop_append_only_triggers(&server.database);
    server
        .database
        .query_text("DELETE FROM audit_events WHERE id = 2 RETURNING CAST(id AS TEXT) AS value");
    let result = verify(&server).await;
    assert!(!result.intact);
    assert_eq!(result.first_broken_event_id, 3);
    assert_eq!(
        result.reason,
        "its previous_hash is not the hash of the event before it"
    );
}

backend_tests! {
    changes_write_events,
    task_changes_write_events,
    resolved_finding_gets_own_event,
    failed_change_writes_no_event,
    list_filters_and_pages,
    database_rejects_changed_events,
    tampered_event_is_found,
    removed_event_is_found,
}
