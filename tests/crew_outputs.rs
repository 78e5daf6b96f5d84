//! CrewService: creating, reading, listing and updating crew outputs.

mod common;

use std::collections::HashSet;

use code_analyzer::pb::{self, CrewOutputStatus};
use common::{TestServer, assert_status, expect_error, nested_struct, to_struct};
use prost_types::{FieldMask, Timestamp};
use serde_json::json;
use tonic::Code;

fn create_request(crew_name: &str, output_type: &str) -> pb::CreateCrewOutputRequest {
    pb::CreateCrewOutputRequest {
        crew_name: crew_name.to_string(),
        output_type: output_type.to_string(),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|path| path.to_string()).collect(),
    })
}

fn micros(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000)
}

/// Lists every page with `page_size` and returns the ids in order.
async fn list_ids(server: &mut TestServer, request: pb::ListCrewOutputsRequest) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut request = request;
    loop {
        let page = server
            .crew
            .list_crew_outputs(request.clone())
            .await
            .expect("ListCrewOutputs failed")
            .into_inner();
        ids.extend(page.crew_outputs.iter().map(|output| output.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

async fn set_status(
    server: &mut TestServer,
    id: i64,
    status: CrewOutputStatus,
) -> Result<pb::CrewOutput, tonic::Status> {
    server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id,
            crew_output: Some(pb::CrewOutput {
                status: status as i32,
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn set_status_result(
    server: &mut TestServer,
    id: i64,
) -> Result<tonic::Response<pb::CrewOutput>, tonic::Status> {
    server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id,
            crew_output: Some(pb::CrewOutput {
                status: CrewOutputStatus::Running as i32,
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
        })
        .await
}

async fn create_defaults_to_pending(mut server: TestServer) {
    let created = server
        .crew
        .create_crew_output(create_request("reviewer", "review"))
        .await
        .unwrap()
        .into_inner();

    assert!(created.id > 0);
    assert_eq!(created.crew_name, "reviewer");
    assert_eq!(created.output_type, "review");
    assert_eq!(created.status, CrewOutputStatus::Pending as i32);
    assert_eq!(created.started_at, None);
    assert_eq!(created.finished_at, None);
    assert!(created.created_at.is_some());
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.results, Some(Default::default()));
    assert_eq!(created.revision, 1);
}

async fn create_with_running_sets_started_at(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.status = CrewOutputStatus::Running as i32;
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(created.status, CrewOutputStatus::Running as i32);
    assert_eq!(created.started_at, created.created_at);
    assert_eq!(created.finished_at, None);
}

async fn create_with_failed_keeps_error_message(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.status = CrewOutputStatus::Failed as i32;
    request.error_message = "model quota exceeded".to_string();
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(created.status, CrewOutputStatus::Failed as i32);
    assert_eq!(created.error_message, "model quota exceeded");
    assert!(created.finished_at.is_some());
}

async fn create_results_round_trip(mut server: TestServer) {
    let results = json!({
        "line": 5,
        "score": 0.5,
        "big": 9_007_199_254_740_992_i64,
        "negative": -3,
        "name": "tool",
        "flag": true,
        "missing": null,
        "nested": {"list": [1, "a", false, null, {"deep": 2}]}
    });
    let mut request = create_request("reviewer", "review");
    request.results = Some(to_struct(results.clone()));
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();
    let fetched = server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(created.results, Some(to_struct(results.clone())));
    assert_eq!(fetched.results, Some(to_struct(results)));
}

async fn create_results_stores_integers(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.results = Some(to_struct(json!({"line": 5, "score": 0.5, "list": [7]})));
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();

    let stored = server.database.query_text(&format!(
        "SELECT results AS value FROM crew_outputs WHERE id = {}",
        created.id
    ));
    let stored: serde_json::Value =
        serde_json::from_str(&stored).expect("results column is not JSON");
    assert_eq!(stored["line"].as_i64(), Some(5), "stored results: {stored}");
    assert_eq!(
        stored["list"][0].as_i64(),
        Some(7),
        "stored results: {stored}"
    );
    assert_eq!(
        stored["score"].as_f64(),
        Some(0.5),
        "stored results: {stored}"
    );
}

async fn create_requires_crew_name(mut server: TestServer) {
    for crew_name in ["", "   "] {
        let status = expect_error(
            server
                .crew
                .create_crew_output(create_request(crew_name, "review"))
                .await,
        );
        assert_status(&status, Code::InvalidArgument, "crew_name: is required");
    }
}

async fn create_rejects_long_crew_name(mut server: TestServer) {
    let status = expect_error(
        server
            .crew
            .create_crew_output(create_request(&"c".repeat(257), "review"))
            .await,
    );

    assert_status(&status, Code::InvalidArgument, "crew_name:");
    assert!(
        status.message().contains("257 bytes"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("limit of 256"),
        "{}",
        status.message()
    );
}

async fn create_accepts_crew_name_at_limit(mut server: TestServer) {
    let created = server
        .crew
        .create_crew_output(create_request(&"c".repeat(256), "review"))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(created.crew_name.len(), 256);
}

async fn create_requires_output_type(mut server: TestServer) {
    let status = expect_error(
        server
            .crew
            .create_crew_output(create_request("reviewer", ""))
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "output_type: is required");

    let status = expect_error(
        server
            .crew
            .create_crew_output(create_request("reviewer", &"t".repeat(257)))
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "output_type:");
}

async fn create_rejects_bad_documents(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.results = Some(nested_struct(33));
    let status = expect_error(server.crew.create_crew_output(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "results: is nested deeper than 32 levels",
    );

    let mut request = create_request("reviewer", "review");
    request.results = Some(nested_struct(32));
    assert!(server.crew.create_crew_output(request).await.is_ok());

    let mut request = create_request("reviewer", "review");
    request.results = Some(prost_types::Struct {
        fields: [(
            "x".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
            },
        )]
        .into(),
    });
    let status = expect_error(server.crew.create_crew_output(request).await);
    assert_status(&status, Code::InvalidArgument, "results:");
    assert!(status.message().contains("NaN"), "{}", status.message());
}

async fn create_rejects_oversized_fields(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.error_message = "e".repeat(64 * 1024 + 1);
    let status = expect_error(server.crew.create_crew_output(request).await);
    assert_status(&status, Code::InvalidArgument, "error_message:");

    let mut request = create_request("reviewer", "review");
    request.results = Some(to_struct(json!({"text": "r".repeat(1024 * 1024)})));
    let status = expect_error(server.crew.create_crew_output(request).await);
    assert_status(&status, Code::InvalidArgument, "results:");
    assert!(
        status.message().contains("limit of 1048576"),
        "{}",
        status.message()
    );
}

async fn create_rejects_unknown_status(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.status = 99;
    let status = expect_error(server.crew.create_crew_output(request).await);

    assert_status(
        &status,
        Code::InvalidArgument,
        "status: 99 is not a known value",
    );
}

async fn get_returns_created(mut server: TestServer) {
    let created = server.create_crew_output("reviewer").await;
    let fetched = server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(fetched, created);
}

async fn get_unknown_id_not_found(mut server: TestServer) {
    let status = expect_error(
        server
            .crew
            .get_crew_output(pb::GetCrewOutputRequest { id: 999 })
            .await,
    );

    assert_status(&status, Code::NotFound, "crew output 999 not found");
}

async fn get_nonpositive_id_invalid(mut server: TestServer) {
    for id in [0, -4] {
        let status = expect_error(
            server
                .crew
                .get_crew_output(pb::GetCrewOutputRequest { id })
                .await,
        );
        assert_status(&status, Code::InvalidArgument, "id: must be a positive id");
    }
}

async fn list_filters_by_name_type_and_status(mut server: TestServer) {
    let a_review = server
        .crew
        .create_crew_output(create_request("alpha", "review"))
        .await
        .unwrap()
        .into_inner();
    let a_sarif = server
        .crew
        .create_crew_output(create_request("alpha", "sarif"))
        .await
        .unwrap()
        .into_inner();
    let b_review = server
        .crew
        .create_crew_output(create_request("beta", "review"))
        .await
        .unwrap()
        .into_inner();
    set_status(&mut server, b_review.id, CrewOutputStatus::Running)
        .await
        .unwrap();

    let by_name = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            crew_name: "alpha".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_name, vec![a_sarif.id, a_review.id]);

    let by_type = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            output_type: "review".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_type, vec![b_review.id, a_review.id]);

    let by_status = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            status: CrewOutputStatus::Running as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_status, vec![b_review.id]);

    let combined = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            crew_name: "alpha".to_string(),
            output_type: "sarif".to_string(),
            status: CrewOutputStatus::Pending as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(combined, vec![a_sarif.id]);

    let none = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            crew_name: "gamma".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(none, Vec::<i64>::new());
}

async fn list_filters_by_creation_time(mut server: TestServer) {
    let mut created = Vec::new();
    for _ in 0..4 {
        created.push(server.create_crew_output("timed").await);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let boundary = created[2].created_at.unwrap();
    let expected_after: Vec<i64> = created
        .iter()
        .rev()
        .filter(|output| micros(output.created_at.as_ref().unwrap()) >= micros(&boundary))
        .map(|output| output.id)
        .collect();
    let expected_before: Vec<i64> = created
        .iter()
        .rev()
        .filter(|output| micros(output.created_at.as_ref().unwrap()) < micros(&boundary))
        .map(|output| output.id)
        .collect();

    let after = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            created_after: Some(boundary),
            ..Default::default()
        },
    )
    .await;
    let before = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            created_before: Some(boundary),
            ..Default::default()
        },
    )
    .await;
    let between = list_ids(
        &mut server,
        pb::ListCrewOutputsRequest {
            created_after: created[1].created_at,
            created_before: Some(boundary),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(after, expected_after);
    assert!(after.contains(&created[2].id), "created_after is inclusive");
    assert_eq!(before, expected_before);
    assert!(
        !before.contains(&created[2].id),
        "created_before is exclusive"
    );
    assert_eq!(between, vec![created[1].id]);
}

async fn list_rejects_invalid_filters(mut server: TestServer) {
    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest {
                created_after: Some(Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "created_after: is not a valid timestamp",
    );

    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest {
                status: 42,
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "status:");

    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "page_size: must not be negative",
    );
}

async fn list_pages_through_all(mut server: TestServer) {
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(server.create_crew_output("pager").await.id);
    }
    let newest_first: Vec<i64> = created.iter().rev().copied().collect();

    let mut request = pb::ListCrewOutputsRequest {
        page_size: 3,
        ..Default::default()
    };
    let mut page_lengths = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = server
            .crew
            .list_crew_outputs(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 7);
        page_lengths.push(page.crew_outputs.len());
        seen.extend(page.crew_outputs.iter().map(|output| output.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    assert_eq!(page_lengths, vec![3, 3, 1]);
    assert_eq!(seen, newest_first);
}

async fn list_default_page_size_is_fifty(mut server: TestServer) {
    for _ in 0..51 {
        server.create_crew_output("many").await;
    }
    let page = server
        .crew
        .list_crew_outputs(pb::ListCrewOutputsRequest::default())
        .await
        .unwrap()
        .into_inner();

    assert_eq!(page.crew_outputs.len(), 50);
    assert_eq!(page.total_size, 51);
    assert!(!page.next_page_token.is_empty());
}

async fn list_token_with_other_filters_invalid(mut server: TestServer) {
    for _ in 0..3 {
        server.create_crew_output("alpha").await;
    }
    let first = server
        .crew
        .list_crew_outputs(pb::ListCrewOutputsRequest {
            page_size: 1,
            crew_name: "alpha".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest {
                page_size: 1,
                crew_name: "beta".to_string(),
                page_token: first.next_page_token.clone(),
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "page_token:");

    let status = expect_error(
        server
            .crew
            .list_crew_outputs(pb::ListCrewOutputsRequest {
                page_token: "not-a-token".to_string(),
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "page_token:");

    // A different page size keeps the token valid, because it is not a filter.
    let second = server
        .crew
        .list_crew_outputs(pb::ListCrewOutputsRequest {
            page_size: 5,
            crew_name: "alpha".to_string(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.crew_outputs.len(), 2);
}

async fn list_paging_stable_under_inserts(mut server: TestServer) {
    let mut original = Vec::new();
    for _ in 0..5 {
        original.push(server.create_crew_output("stable").await.id);
    }
    let mut request = pb::ListCrewOutputsRequest {
        page_size: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = server
            .crew
            .list_crew_outputs(request.clone())
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.crew_outputs.iter().map(|output| output.id));
        // New rows between pages are newer than every row already paged.
        server.create_crew_output("stable").await;
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates in {seen:?}");
    let newest_first: Vec<i64> = original.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
}

async fn update_walks_life_cycle(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;

    let running = set_status(&mut server, created.id, CrewOutputStatus::Running)
        .await
        .unwrap();
    assert_eq!(running.status, CrewOutputStatus::Running as i32);
    assert!(running.started_at.is_some());
    assert_eq!(running.finished_at, None);

    let succeeded = set_status(&mut server, created.id, CrewOutputStatus::Succeeded)
        .await
        .unwrap();
    assert_eq!(succeeded.status, CrewOutputStatus::Succeeded as i32);
    assert_eq!(succeeded.started_at, running.started_at);
    assert!(succeeded.finished_at.is_some());
    assert!(micros(&succeeded.finished_at.unwrap()) >= micros(&running.started_at.unwrap()));
    assert!(micros(&succeeded.updated_at.unwrap()) >= micros(&created.updated_at.unwrap()));
    assert_eq!(running.revision, 2);
    assert_eq!(succeeded.revision, 3);

    let fetched = server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, succeeded);
}

async fn update_pending_to_final_leaves_started_at_unset(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let cancelled = set_status(&mut server, created.id, CrewOutputStatus::Cancelled)
        .await
        .unwrap();

    assert_eq!(cancelled.status, CrewOutputStatus::Cancelled as i32);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(
        cancelled.started_at, None,
        "started_at is unset for a run that never entered RUNNING"
    );
}

async fn create_final_leaves_started_at_unset(mut server: TestServer) {
    let mut request = create_request("reviewer", "review");
    request.status = CrewOutputStatus::Succeeded as i32;
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();

    assert!(created.finished_at.is_some());
    assert_eq!(
        created.started_at, None,
        "started_at is unset for a run that never entered RUNNING"
    );
}

async fn update_same_status_is_allowed(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let running = set_status(&mut server, created.id, CrewOutputStatus::Running)
        .await
        .unwrap();
    let again = set_status(&mut server, created.id, CrewOutputStatus::Running)
        .await
        .unwrap();

    assert_eq!(again.status, CrewOutputStatus::Running as i32);
    assert_eq!(again.started_at, running.started_at);
    // Nothing changed, so neither the revision nor updated_at moves.
    assert_eq!(again.revision, running.revision);
    assert_eq!(again.updated_at, running.updated_at);
}

async fn update_illegal_transition_fails_precondition(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    set_status(&mut server, created.id, CrewOutputStatus::Succeeded)
        .await
        .unwrap();

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput {
                    status: CrewOutputStatus::Running as i32,
                    ..Default::default()
                }),
                update_mask: mask(&["status"]),
            })
            .await,
    );

    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!("crew output {}", created.id),
    );
    assert!(
        status.message().contains("CREW_OUTPUT_STATUS_SUCCEEDED"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("CREW_OUTPUT_STATUS_RUNNING"),
        "{}",
        status.message()
    );
    let fetched = server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest { id: created.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.status, CrewOutputStatus::Succeeded as i32);
    assert_eq!(
        fetched.revision, 2,
        "a rejected update must not count as a change"
    );
}

async fn update_back_to_pending_fails_precondition(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    set_status(&mut server, created.id, CrewOutputStatus::Running)
        .await
        .unwrap();

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput {
                    status: CrewOutputStatus::Pending as i32,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
    );

    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!("crew output {}", created.id),
    );
    assert!(
        status.message().contains("CREW_OUTPUT_STATUS_PENDING"),
        "{}",
        status.message()
    );
}

async fn update_mask_limits_changes(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let updated = server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id: created.id,
            crew_output: Some(pb::CrewOutput {
                status: CrewOutputStatus::Running as i32,
                output_type: "changed".to_string(),
                error_message: "ignored".to_string(),
                results: Some(to_struct(json!({"ignored": true}))),
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(updated.status, CrewOutputStatus::Running as i32);
    assert_eq!(updated.output_type, "review");
    assert_eq!(updated.error_message, "");
    assert_eq!(updated.results, Some(Default::default()));
}

async fn update_mask_clears_named_fields(mut server: TestServer) {
    let mut request = create_request("runner", "review");
    request.results = Some(to_struct(json!({"old": 1})));
    request.error_message = "old error".to_string();
    let created = server
        .crew
        .create_crew_output(request)
        .await
        .unwrap()
        .into_inner();

    let updated = server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id: created.id,
            crew_output: Some(pb::CrewOutput::default()),
            update_mask: mask(&["results", "error_message"]),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(updated.results, Some(Default::default()));
    assert_eq!(updated.error_message, "");
    assert_eq!(updated.status, CrewOutputStatus::Pending as i32);
}

async fn update_without_mask_sets_given_fields(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let updated = server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id: created.id,
            crew_output: Some(pb::CrewOutput {
                results: Some(to_struct(json!({"findings": 12}))),
                error_message: "partial output".to_string(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(updated.results, Some(to_struct(json!({"findings": 12}))));
    assert_eq!(updated.error_message, "partial output");
    assert_eq!(updated.output_type, "review");
    assert_eq!(updated.status, CrewOutputStatus::Pending as i32);

    let finished = server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id: created.id,
            crew_output: Some(pb::CrewOutput {
                status: CrewOutputStatus::Cancelled as i32,
                output_type: "sarif".to_string(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: Vec::new() }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(finished.status, CrewOutputStatus::Cancelled as i32);
    assert_eq!(finished.output_type, "sarif");
    assert_eq!(finished.results, Some(to_struct(json!({"findings": 12}))));
    assert_eq!(finished.error_message, "partial output");
    assert!(finished.finished_at.is_some());
}

async fn update_bad_mask_path_invalid(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput {
                    crew_name: "renamed".to_string(),
                    ..Default::default()
                }),
                update_mask: mask(&["crew_name"]),
            })
            .await,
    );

    assert_status(&status, Code::InvalidArgument, "update_mask:");
    assert!(
        status.message().contains("\"crew_name\""),
        "{}",
        status.message()
    );
}

async fn update_mask_requires_named_values(mut server: TestServer) {
    let created = server.create_crew_output("runner").await;
    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput::default()),
                update_mask: mask(&["status"]),
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "crew_output.status: is required",
    );

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput::default()),
                update_mask: mask(&["output_type"]),
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "crew_output.output_type: is required",
    );

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: None,
                update_mask: None,
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "crew_output: is required");

    let status = expect_error(
        server
            .crew
            .update_crew_output(pb::UpdateCrewOutputRequest {
                id: created.id,
                crew_output: Some(pb::CrewOutput {
                    output_type: "t".repeat(257),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "crew_output.output_type:");
}

async fn update_unknown_id_not_found(mut server: TestServer) {
    let status = expect_error(set_status_result(&mut server, 999).await);
    assert_status(&status, Code::NotFound, "crew output 999 not found");

    let status = expect_error(set_status_result(&mut server, 0).await);
    assert_status(&status, Code::InvalidArgument, "id:");
}

backend_tests! {
    create_defaults_to_pending,
    create_with_running_sets_started_at,
    create_with_failed_keeps_error_message,
    create_results_round_trip,
    create_results_stores_integers,
    create_requires_crew_name,
    create_rejects_long_crew_name,
    create_accepts_crew_name_at_limit,
    create_requires_output_type,
    create_rejects_bad_documents,
    create_rejects_oversized_fields,
    create_rejects_unknown_status,
    get_returns_created,
    get_unknown_id_not_found,
    get_nonpositive_id_invalid,
    list_filters_by_name_type_and_status,
    list_filters_by_creation_time,
    list_rejects_invalid_filters,
    list_pages_through_all,
    list_default_page_size_is_fifty,
    list_token_with_other_filters_invalid,
    list_paging_stable_under_inserts,
    update_walks_life_cycle,
    update_pending_to_final_leaves_started_at_unset,
    create_final_leaves_started_at_unset,
    update_same_status_is_allowed,
    update_illegal_transition_fails_precondition,
    update_back_to_pending_fails_precondition,
    update_mask_limits_changes,
    update_mask_clears_named_fields,
    update_without_mask_sets_given_fields,
    update_bad_mask_path_invalid,
    update_mask_requires_named_values,
    update_unknown_id_not_found,
}
