//! State analysis on both backends: CompareRuns on the fixture runs and on
//! small runs, triage decisions carried to later runs of a crew, findings
//! marked FIXED and REOPENED, and fixes VERIFIED and then REGRESSED.

mod common;

use std::collections::HashSet;

use code_analyzer::pb::{
    self, CrewOutputStatus, DismissReason, FindingChange, FindingStatus, FixStatus,
};
use common::{TestServer, assert_status, expect_error, fixture};
use tonic::Code;

/// A SARIF log of one ruff run with one result per `(rule, path, message, line)`.
fn sarif_log(results: &[(&str, &str, &str, i32)]) -> Vec<u8> {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|(rule, path, message, line)| {
            serde_json::json!({
                "ruleId": rule,
                "level": "error",
                "message": {"text": message},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": format!("file:///repo/{path}")},
                    "region": {"startLine": line}
                }}]
            })
        })
        .collect();
    serde_json::json!({
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "ruff"}}, "results": results}]
    })
    .to_string()
    .into_bytes()
}

async fn import(server: &mut TestServer, results: &[(&str, &str, &str, i32)]) -> i64 {
    let options = pb::ImportSarifOptions {
        source_root: "/repo".to_string(),
        ..Default::default()
    };
    let response = server
        .import_sarif(options, &sarif_log(results), 1 << 20)
        .await
        .expect("import failed");
    response.runs[0].crew_output_id
}

async fn findings_of(server: &mut TestServer, run: i64) -> Vec<pb::Finding> {
    server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id: run,
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .findings
}

fn by_rule<'a>(findings: &'a [pb::Finding], rule: &str) -> &'a pb::Finding {
    findings
        .iter()
        .find(|finding| finding.rule_id == rule)
        .unwrap_or_else(|| panic!("no finding of rule {rule}"))
}

async fn compare(
    server: &mut TestServer,
    request: pb::CompareRunsRequest,
) -> pb::CompareRunsResponse {
    server
        .analysis
        .compare_runs(request)
        .await
        .unwrap()
        .into_inner()
}

fn compare_request(base: i64, head: i64) -> pb::CompareRunsRequest {
    pb::CompareRunsRequest {
        base_crew_output_id: base,
        head_crew_output_id: head,
        ..Default::default()
    }
}

async fn compare_fixture_runs(mut server: TestServer) {
    let (Some(base_log), Some(head_log)) = (
        fixture("sarif/ruff-crewai-2026-05.sarif.gz"),
        fixture("sarif/ruff-crewai-2026-08.sarif.gz"),
    ) else {
        return;
    };
    let base = server
        .import_sarif(
            common::crewai_options(),
            &std::fs::read(base_log).unwrap(),
            1 << 20,
        )
        .await
        .unwrap()
        .runs[0]
        .crew_output_id;
    let head = server
        .import_sarif(
            common::crewai_options(),
            &std::fs::read(head_log).unwrap(),
            1 << 20,
        )
        .await
        .unwrap()
        .runs[0]
        .crew_output_id;

    let whole = compare(&mut server, compare_request(base, head)).await;
    assert_eq!(whole.new_count, 6_079);
    assert_eq!(whole.resolved_count, 1_072);
    assert_eq!(whole.persisting_count, 15_118);
    assert_eq!(whole.total_size, 6_079 + 1_072 + 15_118);
    let diff = whole.results_diff.unwrap();
    assert!(
        diff.changed.contains(&"/result_count".to_string()),
        "{diff:?}"
    );

    let mut one_file = compare_request(base, head);
    one_file.file_path_prefix = "lib/crewai/tests/test_crew.py".to_string();
    let one_file = compare(&mut server, one_file).await;
    assert_eq!(one_file.new_count, 11);
    assert_eq!(one_file.resolved_count, 1);
    assert_eq!(one_file.persisting_count, 486);

    // Paging through the new findings lists each once, all of the head run.
    let mut seen = HashSet::new();
    let mut request = compare_request(base, head);
    request.change = FindingChange::New as i32;
    request.page_size = 1_000;
    loop {
        let page = compare(&mut server, request.clone()).await;
        assert_eq!(page.total_size, 6_079);
        for compared in &page.findings {
            assert_eq!(compared.change(), FindingChange::New);
            let finding = compared.finding.as_ref().unwrap();
            assert_eq!(finding.crew_output_id, head);
            assert!(
                seen.insert(finding.id),
                "finding {} listed twice",
                finding.id
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6_079);
}

async fn compare_small_runs_pages_all_kinds(mut server: TestServer) {
    let base = import(
        &mut server,
        &[
            ("F401", "a.py", "unused import os", 1),
            ("F401", "a.py", "unused import os", 9),
            ("E501", "b.py", "line too long", 3),
        ],
    )
    .await;
    let head = import(
        &mut server,
        &[
            ("F401", "a.py", "unused import os", 10),
            ("S101", "c.py", "assert used", 2),
        ],
    )
    .await;

    let result = compare(&mut server, compare_request(base, head)).await;
    assert_eq!(
        (
            result.new_count,
            result.persisting_count,
            result.resolved_count
        ),
        (1, 1, 2)
    );
    // The head finding at line 10 pairs with the base finding at line 9.
    let base_findings = findings_of(&mut server, base).await;
    let persisting = result
        .findings
        .iter()
        .find(|compared| compared.change() == FindingChange::Persisting)
        .unwrap();
    let line_nine = base_findings
        .iter()
        .find(|f| f.range.unwrap().start_line == 9)
        .unwrap();
    assert_eq!(persisting.base_finding_id, line_nine.id);

    let mut request = compare_request(base, head);
    request.page_size = 1;
    let mut kinds = Vec::new();
    loop {
        let page = compare(&mut server, request.clone()).await;
        assert_eq!(page.findings.len(), 1);
        kinds.push(page.findings[0].change());
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    use FindingChange::*;
    assert_eq!(kinds, [New, Persisting, Resolved, Resolved]);

    let mut filtered = compare_request(base, head);
    filtered.rule_id = "F401".to_string();
    let filtered = compare(&mut server, filtered).await;
    assert_eq!(
        (
            filtered.new_count,
            filtered.persisting_count,
            filtered.resolved_count
        ),
        (0, 1, 1)
    );

    // Every finding here is HIGH (SARIF level "error").
    let counts = |response: pb::CompareRunsResponse| {
        (
            response.new_count,
            response.persisting_count,
            response.resolved_count,
        )
    };
    let mut high = compare_request(base, head);
    high.min_priority = pb::Priority::High as i32;
    assert_eq!(counts(compare(&mut server, high).await), (1, 1, 2));
    let mut critical = compare_request(base, head);
    critical.min_priority = pb::Priority::Critical as i32;
    assert_eq!(counts(compare(&mut server, critical).await), (0, 0, 0));
    let mut prefix = compare_request(base, head);
    prefix.file_path_prefix = "b.".to_string();
    assert_eq!(counts(compare(&mut server, prefix).await), (0, 0, 1));
}

async fn compare_rejects_bad_requests(mut server: TestServer) {
    let run = import(&mut server, &[("F401", "a.py", "unused import", 1)]).await;
    let status = expect_error(
        server
            .analysis
            .compare_runs(compare_request(run, 999))
            .await,
    );
    assert_status(&status, Code::NotFound, "crew output 999 not found");
    let status = expect_error(server.analysis.compare_runs(compare_request(0, run)).await);
    assert_status(&status, Code::InvalidArgument, "base_crew_output_id:");
    let mut request = compare_request(run, run);
    request.change = 9;
    let status = expect_error(server.analysis.compare_runs(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "change: 9 is not a known value",
    );
    let mut request = compare_request(run, run);
    request.page_token = "bm90IGEgdG9rZW4".to_string();
    let status = expect_error(server.analysis.compare_runs(request).await);
    assert_status(&status, Code::InvalidArgument, "page_token:");
}

async fn compare_reports_results_diff(mut server: TestServer) {
    let create = |results: serde_json::Value| pb::CreateCrewOutputRequest {
        crew_name: "review".to_string(),
        output_type: "summary".to_string(),
        results: Some(common::to_struct(results)),
        ..Default::default()
    };
    let base_request = create(serde_json::json!({"model": "a", "files": 3, "old": true}));
    let head_request = create(serde_json::json!({"model": "b", "files": 3, "tokens": {"in": 5}}));
    let base = server
        .crew
        .create_crew_output(base_request)
        .await
        .unwrap()
        .into_inner();
    let head = server
        .crew
        .create_crew_output(head_request)
        .await
        .unwrap()
        .into_inner();

    let diff = compare(&mut server, compare_request(base.id, head.id))
        .await
        .results_diff
        .unwrap();
    assert_eq!(diff.added, ["/tokens"]);
    assert_eq!(diff.removed, ["/old"]);
    assert_eq!(diff.changed, ["/model"]);
}

async fn triage_carries_across_runs(mut server: TestServer) {
    let a = ("S105", "app.py", "hardcoded password", 10);
    let b = ("S608", "db.py", "SQL built from strings", 20);
    let c = ("E501", "app.py", "line too long", 30);

    let first = import(&mut server, &[a, b, c]).await;
    let first_findings = findings_of(&mut server, first).await;
    let decide =
        |finding: &pb::Finding, status: FindingStatus, reason: &str| pb::UpdateFindingRequest {
            id: finding.id,
            status: status as i32,
            reason: reason.to_string(),
            dismiss_reason: if status == FindingStatus::Dismissed {
                DismissReason::UsedInTests as i32
            } else {
                0
            },
        };
    let dismiss = decide(
        by_rule(&first_findings, "S105"),
        FindingStatus::Dismissed,
        "used in tests",
    );
    let confirm = decide(
        by_rule(&first_findings, "S608"),
        FindingStatus::Confirmed,
        "real injection",
    );
    server.analysis.update_finding(dismiss).await.unwrap();
    server.analysis.update_finding(confirm).await.unwrap();

    // The second run no longer reports C: the first run's C is fixed, and
    // the decisions on A and B carry over.
    let second = import(&mut server, &[a, b]).await;
    let second_findings = findings_of(&mut server, second).await;
    assert_eq!(
        by_rule(&second_findings, "S105").status(),
        FindingStatus::Dismissed
    );
    assert_eq!(
        by_rule(&second_findings, "S105").status_reason,
        "used in tests"
    );
    assert_eq!(
        by_rule(&second_findings, "S105").dismiss_reason(),
        DismissReason::UsedInTests
    );
    assert_eq!(
        by_rule(&second_findings, "S608").status(),
        FindingStatus::Confirmed
    );
    assert_eq!(
        by_rule(&second_findings, "S608").status_reason,
        "real injection"
    );
    let first_findings = findings_of(&mut server, first).await;
    let fixed = by_rule(&first_findings, "E501");
    assert_eq!(fixed.status(), FindingStatus::Fixed);
    assert_eq!(fixed.status_reason, format!("not reported by run {second}"));
    assert_eq!(
        by_rule(&first_findings, "S105").status(),
        FindingStatus::Dismissed
    );

    // The third run reports C again: it comes back reopened.
    let third = import(&mut server, &[a, b, c]).await;
    let third_findings = findings_of(&mut server, third).await;
    assert_eq!(
        by_rule(&third_findings, "E501").status(),
        FindingStatus::Reopened
    );
    assert_eq!(
        by_rule(&third_findings, "S105").status(),
        FindingStatus::Dismissed
    );
    assert_eq!(
        by_rule(&third_findings, "S608").status(),
        FindingStatus::Confirmed
    );
}

async fn triage_survives_a_repeated_fingerprint(mut server: TestServer) {
    // Rule, path and message give one fingerprint to both findings.
    let early = ("S608", "db.py", "SQL built from strings", 10);
    let late = ("S608", "db.py", "SQL built from strings", 40);
    let first = import(&mut server, &[early, late]).await;
    let first_findings = findings_of(&mut server, first).await;
    let confirmed = first_findings
        .iter()
        .find(|finding| finding.range.unwrap().start_line == 10)
        .unwrap();
    server
        .analysis
        .update_finding(pb::UpdateFindingRequest {
            id: confirmed.id,
            status: FindingStatus::Confirmed as i32,
            reason: "real injection".to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The second run reports the fingerprint once: the first run's finding
    // at line 40 is resolved, but the fingerprint is still reported, so the
    // decision on it stays.
    let second = import(&mut server, &[early]).await;
    let second_findings = findings_of(&mut server, second).await;
    assert_eq!(second_findings.len(), 1);
    assert_eq!(second_findings[0].status(), FindingStatus::Confirmed);
    let first_findings = findings_of(&mut server, first).await;
    let at_line = |line: i32| {
        first_findings
            .iter()
            .find(|finding| finding.range.unwrap().start_line == line)
            .unwrap()
            .status()
    };
    assert_eq!(at_line(10), FindingStatus::Confirmed);
    assert_eq!(at_line(40), FindingStatus::Fixed);

    let third = import(&mut server, &[early]).await;
    let third_findings = findings_of(&mut server, third).await;
    assert_eq!(third_findings[0].status(), FindingStatus::Confirmed);
    assert_eq!(third_findings[0].status_reason, "real injection");
}

/// Creates a RUNNING run of crew "fixer" with findings of the given rules.
async fn running_run(server: &mut TestServer, rules: &[&str]) -> (i64, Vec<pb::Finding>) {
    let run = server
        .crew
        .create_crew_output(pb::CreateCrewOutputRequest {
            crew_name: "fixer".to_string(),
            output_type: "review".to_string(),
            status: CrewOutputStatus::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let findings = rules
        .iter()
        .map(|rule| common::new_finding("src/app.py", rule, &format!("problem {rule}")))
        .collect();
    (run.id, server.record_findings(run.id, findings).await)
}

async fn finish(server: &mut TestServer, run: i64) {
    server
        .crew
        .update_crew_output(pb::UpdateCrewOutputRequest {
            id: run,
            crew_output: Some(pb::CrewOutput {
                status: CrewOutputStatus::Succeeded as i32,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
}

async fn fix_status(server: &mut TestServer, id: i64) -> FixStatus {
    server
        .fixes
        .get_fix(pb::GetFixRequest { id })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn fix_verified_then_regressed(mut server: TestServer) {
    let (first, findings) = running_run(&mut server, &["S105", "E501"]).await;
    let fix = server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id: first,
            file_path: "src/app.py".to_string(),
            description: "read the password from the environment".to_string(),
            status: FixStatus::Applied as i32,
            finding_ids: vec![by_rule(&findings, "S105").id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    finish(&mut server, first).await;
    assert_eq!(fix_status(&mut server, fix.id).await, FixStatus::Applied);

    // The next run no longer reports S105: the fix is verified.
    let (second, _) = running_run(&mut server, &["E501"]).await;
    assert_eq!(
        fix_status(&mut server, fix.id).await,
        FixStatus::Applied,
        "verified only once the run finishes"
    );
    finish(&mut server, second).await;
    assert_eq!(fix_status(&mut server, fix.id).await, FixStatus::Verified);

    // S105 comes back: the fix regressed and the finding is reopened.
    let (third, third_findings) = running_run(&mut server, &["S105", "E501"]).await;
    assert_eq!(
        by_rule(&third_findings, "S105").status(),
        FindingStatus::Reopened
    );
    finish(&mut server, third).await;
    assert_eq!(fix_status(&mut server, fix.id).await, FixStatus::Regressed);
}

async fn dismiss_reason_needs_dismissed(mut server: TestServer) {
    let run = import(&mut server, &[("S105", "app.py", "hardcoded password", 10)]).await;
    let finding = findings_of(&mut server, run).await.remove(0);
    let request = |status: FindingStatus, dismiss_reason: i32| pb::UpdateFindingRequest {
        id: finding.id,
        status: status as i32,
        reason: "checked".to_string(),
        dismiss_reason,
    };

    let confirmed = request(
        FindingStatus::Confirmed,
        DismissReason::FalsePositive as i32,
    );
    let status = expect_error(server.analysis.update_finding(confirmed).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "dismiss_reason: is only valid with status DISMISSED",
    );
    let unknown = request(FindingStatus::Dismissed, 7);
    let status = expect_error(server.analysis.update_finding(unknown).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "dismiss_reason: 7 is not a known value",
    );

    let dismissed = server
        .analysis
        .update_finding(request(
            FindingStatus::Dismissed,
            DismissReason::WontFix as i32,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dismissed.dismiss_reason(), DismissReason::WontFix);
}

backend_tests! {
    dismiss_reason_needs_dismissed,
    compare_fixture_runs,
    compare_small_runs_pages_all_kinds,
    compare_rejects_bad_requests,
    compare_reports_results_diff,
    triage_carries_across_runs,
    triage_survives_a_repeated_fingerprint,
    fix_verified_then_regressed,
}
