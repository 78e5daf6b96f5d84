//! FixService: recording fixes with links to findings, reading, listing
//! and updating them.

mod common;

use code_analyzer::pb::{self, FixStatus};
use common::{TestServer, assert_status, expect_error, nested_struct, new_finding, to_struct};
use serde_json::json;
use tonic::Code;

fn fix_request(
    crew_output_id: i64,
    file_path: &str,
    finding_ids: Vec<i64>,
) -> pb::RecordFixRequest {
    pb::RecordFixRequest {
        crew_output_id,
        file_path: file_path.to_string(),
        description: "Remove the unused import".to_string(),
        finding_ids,
        ..Default::default()
    }
}

/// Creates a crew output with three findings in `lib/a.py` and returns
/// its id and the finding ids.
async fn run_with_findings(server: &mut TestServer) -> (i64, Vec<i64>) {
    let run = server.create_crew_output("fixer").await;
    let findings = server
        .record_findings(
            run.id,
            vec![
                new_finding("lib/a.py", "F401", "`os` imported but unused"),
                new_finding("lib/a.py", "F401", "`sys` imported but unused"),
                new_finding("lib/a.py", "E501", "line too long"),
            ],
        )
        .await;
    (run.id, findings.iter().map(|finding| finding.id).collect())
}

async fn record(server: &mut TestServer, request: pb::RecordFixRequest) -> pb::Fix {
    server
        .fixes
        .record_fix(request)
        .await
        .expect("RecordFix failed")
        .into_inner()
}

/// Lists every page of `request` and returns the fix ids in order.
async fn list_ids(server: &mut TestServer, request: pb::ListFixesRequest) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut request = request;
    loop {
        let page = server
            .fixes
            .list_fixes(request.clone())
            .await
            .expect("ListFixes failed")
            .into_inner();
        ids.extend(page.fixes.iter().map(|fix| fix.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

async fn record_links_findings(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let mut request = fix_request(
        run,
        ".\\lib\\a.py",
        vec![findings[1], findings[0], findings[1]],
    );
    request.changes = Some(to_struct(
        json!({"replacements": [{"line": 3, "delete": 1}]}),
    ));

    let fix = record(&mut server, request).await;

    assert!(fix.id > 0);
    assert_eq!(fix.crew_output_id, run);
    assert_eq!(fix.file_path, "lib/a.py");
    assert_eq!(fix.description, "Remove the unused import");
    assert_eq!(
        fix.status,
        FixStatus::Proposed as i32,
        "UNSPECIFIED means PROPOSED"
    );
    assert_eq!(
        fix.finding_ids,
        vec![findings[0], findings[1]],
        "ascending and without repeats"
    );
    assert_eq!(
        fix.changes,
        Some(to_struct(
            json!({"replacements": [{"line": 3, "delete": 1}]})
        ))
    );
    assert_eq!(fix.revision, 1);

    let fetched = server
        .fixes
        .get_fix(pb::GetFixRequest { id: fix.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, fix);
}

async fn record_without_findings(mut server: TestServer) {
    let run = server.create_crew_output("fixer").await;
    let mut request = fix_request(run.id, "lib/b.py", Vec::new());
    request.status = FixStatus::Applied as i32;
    let fix = record(&mut server, request).await;

    assert_eq!(fix.finding_ids, Vec::<i64>::new());
    assert_eq!(fix.status, FixStatus::Applied as i32);
    assert_eq!(fix.changes, Some(Default::default()));
}

async fn record_foreign_findings_not_found(mut server: TestServer) {
    let (run, _) = run_with_findings(&mut server).await;
    let (_, other_findings) = run_with_findings(&mut server).await;

    let request = fix_request(run, "lib/a.py", vec![other_findings[0], other_findings[2]]);
    let status = expect_error(server.fixes.record_fix(request).await);

    assert_status(&status, Code::NotFound, "finding ");
    assert!(
        status.message().contains(&other_findings[0].to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&other_findings[2].to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&format!("crew output {run}")),
        "{}",
        status.message()
    );
    let listed = list_ids(&mut server, pb::ListFixesRequest::default()).await;
    assert_eq!(listed, Vec::<i64>::new(), "a rejected fix is not stored");
}

async fn record_unknown_finding_not_found(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let request = fix_request(run, "lib/a.py", vec![findings[0], 99_999]);
    let status = expect_error(server.fixes.record_fix(request).await);

    assert_status(&status, Code::NotFound, "finding 99999 in crew output");
}

async fn record_unknown_crew_output_not_found(mut server: TestServer) {
    let status = expect_error(
        server
            .fixes
            .record_fix(fix_request(999, "lib/a.py", Vec::new()))
            .await,
    );

    assert_status(&status, Code::NotFound, "crew output 999 not found");
}

async fn record_negative_finding_id_invalid(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let status = expect_error(
        server
            .fixes
            .record_fix(fix_request(run, "lib/a.py", vec![findings[0], -3]))
            .await,
    );

    assert_status(
        &status,
        Code::InvalidArgument,
        "finding_ids[1]: must be a positive id, got -3",
    );
}

async fn record_rejects_invalid_fields(mut server: TestServer) {
    let run = server.create_crew_output("fixer").await.id;
    let mut bad_status = fix_request(run, "lib/a.py", Vec::new());
    bad_status.status = 99;
    let mut regressed = fix_request(run, "lib/a.py", Vec::new());
    regressed.status = FixStatus::Regressed as i32;
    let mut long_description = fix_request(run, "lib/a.py", Vec::new());
    long_description.description = "d".repeat(64 * 1024 + 1);
    let mut deep_changes = fix_request(run, "lib/a.py", Vec::new());
    deep_changes.changes = Some(nested_struct(33));
    let cases = [
        (
            fix_request(0, "lib/a.py", Vec::new()),
            "crew_output_id: must be a positive id",
        ),
        (fix_request(run, "", Vec::new()), "file_path: is required"),
        (
            fix_request(run, &"p".repeat(4097), Vec::new()),
            "file_path:",
        ),
        (bad_status, "status: 99 is not a known value"),
        (
            regressed,
            "status: FIX_STATUS_REGRESSED is set by the server",
        ),
        (long_description, "description:"),
        (deep_changes, "changes: is nested deeper than 32 levels"),
        (
            fix_request(run, "lib/a.py", vec![1; 10_001]),
            "finding_ids: has 10001 ids",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.fixes.record_fix(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn record_rejects_path_empty_once_normalised(mut server: TestServer) {
    let run = server.create_crew_output("fixer").await.id;
    let status = expect_error(
        server
            .fixes
            .record_fix(fix_request(run, "./", Vec::new()))
            .await,
    );

    assert_status(&status, Code::InvalidArgument, "file_path:");
}

async fn get_unknown_id_not_found(mut server: TestServer) {
    let status = expect_error(server.fixes.get_fix(pb::GetFixRequest { id: 999 }).await);
    assert_status(&status, Code::NotFound, "fix 999 not found");

    let status = expect_error(server.fixes.get_fix(pb::GetFixRequest { id: 0 }).await);
    assert_status(&status, Code::InvalidArgument, "id: must be a positive id");
}

async fn list_filters_by_run_path_and_status(mut server: TestServer) {
    let (first_run, first_findings) = run_with_findings(&mut server).await;
    let (second_run, _) = run_with_findings(&mut server).await;
    let a = record(
        &mut server,
        fix_request(first_run, "lib/a.py", vec![first_findings[0]]),
    )
    .await;
    let b = record(&mut server, fix_request(first_run, "lib/b.py", Vec::new())).await;
    let mut merged = fix_request(second_run, "lib/a.py", Vec::new());
    merged.status = FixStatus::Merged as i32;
    let c = record(&mut server, merged).await;

    let by_run = list_ids(
        &mut server,
        pb::ListFixesRequest {
            crew_output_id: first_run,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_run, vec![a.id, b.id]);

    let by_path = list_ids(
        &mut server,
        pb::ListFixesRequest {
            file_path: "./lib/a.py".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_path, vec![a.id, c.id]);

    let by_status = list_ids(
        &mut server,
        pb::ListFixesRequest {
            status: FixStatus::Merged as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_status, vec![c.id]);

    let combined = list_ids(
        &mut server,
        pb::ListFixesRequest {
            crew_output_id: first_run,
            file_path: "lib/a.py".to_string(),
            status: FixStatus::Proposed as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(combined, vec![a.id]);

    let listed = server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            crew_output_id: first_run,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.fixes[0].finding_ids,
        vec![first_findings[0]],
        "listed fixes carry their links"
    );
}

async fn list_rejects_invalid_filters(mut server: TestServer) {
    let cases = [
        (
            pb::ListFixesRequest {
                crew_output_id: -2,
                ..Default::default()
            },
            "crew_output_id:",
        ),
        (
            pb::ListFixesRequest {
                status: 99,
                ..Default::default()
            },
            "status:",
        ),
        (
            pb::ListFixesRequest {
                file_path: "p".repeat(4097),
                ..Default::default()
            },
            "file_path:",
        ),
        (
            pb::ListFixesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size:",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.fixes.list_fixes(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn list_pages_in_record_order(mut server: TestServer) {
    let run = server.create_crew_output("fixer").await.id;
    let mut recorded = Vec::new();
    for index in 0..5 {
        recorded.push(
            record(
                &mut server,
                fix_request(run, &format!("f{index}.py"), Vec::new()),
            )
            .await
            .id,
        );
    }

    let mut request = pb::ListFixesRequest {
        page_size: 2,
        ..Default::default()
    };
    let mut page_lengths = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = server
            .fixes
            .list_fixes(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 5);
        page_lengths.push(page.fixes.len());
        seen.extend(page.fixes.iter().map(|fix| fix.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    assert_eq!(page_lengths, vec![2, 2, 1]);
    assert_eq!(seen, recorded);

    let first = server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = expect_error(
        server
            .fixes
            .list_fixes(pb::ListFixesRequest {
                page_size: 2,
                status: FixStatus::Applied as i32,
                page_token: first.next_page_token,
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "page_token:");
}

async fn update_changes_status_and_description(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let fix = record(&mut server, fix_request(run, "lib/a.py", vec![findings[0]])).await;

    let applied = server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            status: FixStatus::Applied as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.status, FixStatus::Applied as i32);
    assert_eq!(
        applied.description, fix.description,
        "empty description keeps the current one"
    );
    assert_eq!(
        applied.finding_ids,
        vec![findings[0]],
        "links stay without replace_finding_ids"
    );
    assert_eq!(applied.revision, 2);

    let described = server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            description: "Drop both imports".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        described.status,
        FixStatus::Applied as i32,
        "UNSPECIFIED keeps the current status"
    );
    assert_eq!(described.description, "Drop both imports");
    assert_eq!(described.revision, 3);

    let fetched = server
        .fixes
        .get_fix(pb::GetFixRequest { id: fix.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, described);
}

async fn update_replaces_links(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let fix = record(&mut server, fix_request(run, "lib/a.py", vec![findings[0]])).await;

    let replaced = server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            replace_finding_ids: true,
            finding_ids: vec![findings[2], findings[1]],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replaced.finding_ids, vec![findings[1], findings[2]]);

    let cleared = server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            replace_finding_ids: true,
            finding_ids: Vec::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.finding_ids, Vec::<i64>::new());

    let ignored = server
        .fixes
        .update_fix(pb::UpdateFixRequest {
            id: fix.id,
            replace_finding_ids: false,
            finding_ids: vec![findings[0]],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ignored.finding_ids,
        Vec::<i64>::new(),
        "finding_ids without replace_finding_ids are ignored"
    );
}

async fn update_foreign_links_change_nothing(mut server: TestServer) {
    let (run, findings) = run_with_findings(&mut server).await;
    let (_, other_findings) = run_with_findings(&mut server).await;
    let fix = record(&mut server, fix_request(run, "lib/a.py", vec![findings[0]])).await;

    let status = expect_error(
        server
            .fixes
            .update_fix(pb::UpdateFixRequest {
                id: fix.id,
                status: FixStatus::Merged as i32,
                replace_finding_ids: true,
                finding_ids: vec![other_findings[1]],
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::NotFound,
        &format!("finding {} in crew output {run}", other_findings[1]),
    );

    let fetched = server
        .fixes
        .get_fix(pb::GetFixRequest { id: fix.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, fix, "the failed update is rolled back whole");
}

async fn update_rejects_invalid_fields(mut server: TestServer) {
    let (run, _) = run_with_findings(&mut server).await;
    let fix = record(&mut server, fix_request(run, "lib/a.py", Vec::new())).await;
    let cases = [
        (
            pb::UpdateFixRequest {
                id: fix.id,
                status: 12,
                ..Default::default()
            },
            "status: 12 is not a known value",
        ),
        (
            pb::UpdateFixRequest {
                id: fix.id,
                status: FixStatus::Verified as i32,
                ..Default::default()
            },
            "status: FIX_STATUS_VERIFIED is set by the server when a later run of the crew no \
             longer reports the fix's findings, or reports one again",
        ),
        (
            pb::UpdateFixRequest {
                id: fix.id,
                status: FixStatus::PrDraft as i32,
                ..Default::default()
            },
            "status: FIX_STATUS_PR_DRAFT is set by DraftPullRequest",
        ),
        (
            pb::UpdateFixRequest {
                id: fix.id,
                description: "d".repeat(64 * 1024 + 1),
                ..Default::default()
            },
            "description:",
        ),
        (
            pb::UpdateFixRequest {
                id: fix.id,
                replace_finding_ids: true,
                finding_ids: vec![-1],
                ..Default::default()
            },
            "finding_ids[0]: must be a positive id, got -1",
        ),
        (
            pb::UpdateFixRequest {
                id: 0,
                ..Default::default()
            },
            "id: must be a positive id",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.fixes.update_fix(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn update_unknown_id_not_found(mut server: TestServer) {
    let status = expect_error(
        server
            .fixes
            .update_fix(pb::UpdateFixRequest {
                id: 999,
                status: FixStatus::Applied as i32,
                ..Default::default()
            })
            .await,
    );

    assert_status(&status, Code::NotFound, "fix 999 not found");
}

backend_tests! {
    record_links_findings,
    record_without_findings,
    record_foreign_findings_not_found,
    record_unknown_finding_not_found,
    record_unknown_crew_output_not_found,
    record_negative_finding_id_invalid,
    record_rejects_invalid_fields,
    record_rejects_path_empty_once_normalised,
    get_unknown_id_not_found,
    list_filters_by_run_path_and_status,
    list_rejects_invalid_filters,
    list_pages_in_record_order,
    update_changes_status_and_description,
    update_replaces_links,
    update_foreign_links_change_nothing,
    update_rejects_invalid_fields,
    update_unknown_id_not_found,
}
