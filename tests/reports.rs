//! ReportService: a run exported as SARIF imports back to the same findings,
//! fingerprints and fixes, and a pull-request draft shows a run's open
//! findings and the diffs of their fixes.

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use code_analyzer::pb::report_service_client::ReportServiceClient;
use code_analyzer::pb::{self, FixStatus, Priority};
use common::{
    FIXTURE_SOURCE_ROOT, TestServer, assert_status, crewai_options, expect_error, fixture,
    new_finding, to_struct,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;
const MAY_FIXTURE: &str = "sarif/ruff-crewai-2026-05.sarif.gz";
const AUGUST_FIXTURE: &str = "sarif/ruff-crewai-2026-08.sarif.gz";
/// A file of the 2026-08 fixture with findings of 12 rules and 5 fixes,
/// some with several replacements; no other path starts with it.
const DRAFT_FILE: &str = "lib/devtools/src/crewai_devtools/cli.py";

fn reports(server: &TestServer) -> ReportServiceClient<Channel> {
    ReportServiceClient::new(server.channel.clone())
}

/// Streams the SARIF log of a run, checking the size of every chunk.
async fn export(server: &TestServer, crew_output_id: i64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = reports(server)
        .export_sarif(pb::ExportSarifRequest { crew_output_id })
        .await?
        .into_inner();
    let mut log = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert!(
            chunk.data.len() <= MIB,
            "chunk of {} bytes",
            chunk.data.len()
        );
        assert!(!chunk.data.is_empty(), "empty chunk");
        log.extend_from_slice(&chunk.data);
    }
    Ok(log)
}

/// Imports a log and returns the crew output id of its only run.
async fn import(server: &mut TestServer, options: pb::ImportSarifOptions, log: &[u8]) -> i64 {
    let response = server
        .import_sarif(options, log, MIB)
        .await
        .expect("ImportSarif failed");
    assert_eq!(response.runs.len(), 1);
    response.runs[0].crew_output_id
}

fn read_fixture(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn fixture_json(path: &std::path::Path) -> Value {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(read_fixture(path).as_slice())
        .read_to_end(&mut plain)
        .expect("fixture is not gzip");
    serde_json::from_slice(&plain).expect("fixture is not JSON")
}

async fn all_findings(server: &mut TestServer, crew_output_id: i64) -> Vec<pb::Finding> {
    let mut findings = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = server
            .analysis
            .list_findings(pb::ListFindingsRequest {
                crew_output_id,
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("ListFindings failed")
            .into_inner();
        findings.extend(response.findings);
        if response.next_page_token.is_empty() {
            return findings;
        }
        page_token = response.next_page_token;
    }
}

async fn all_fixes(server: &mut TestServer, crew_output_id: i64) -> Vec<pb::Fix> {
    let mut fixes = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = server
            .fixes
            .list_fixes(pb::ListFixesRequest {
                crew_output_id,
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("ListFixes failed")
            .into_inner();
        fixes.extend(response.fixes);
        if response.next_page_token.is_empty() {
            return fixes;
        }
        page_token = response.next_page_token;
    }
}

type FindingKey = (String, String, String, i32, String, i32);

/// Returns the fields of each finding that a round trip keeps, sorted.
fn finding_keys(findings: &[pb::Finding]) -> Vec<FindingKey> {
    let mut keys: Vec<FindingKey> = findings
        .iter()
        .map(|finding| {
            (
                finding.file_path.clone(),
                finding.rule_id.clone(),
                finding.message.clone(),
                finding.range.unwrap_or_default().start_line,
                finding.fingerprint.clone(),
                finding.fingerprint_version,
            )
        })
        .collect();
    keys.sort();
    keys
}

fn fix_paths(fixes: &[pb::Fix]) -> Vec<String> {
    let mut paths: Vec<String> = fixes.iter().map(|fix| fix.file_path.clone()).collect();
    paths.sort();
    paths
}

/// Imports a fixture, exports it, imports the export without a source root
/// and checks that both runs hold the same findings and fixes.
async fn check_fixture_round_trip(server: &mut TestServer, fixture_path: &std::path::Path) {
    let original = import(server, crewai_options(), &read_fixture(fixture_path)).await;
    let log = export(server, original).await.expect("ExportSarif failed");
    assert!(log.len() > MIB, "a fixture log spans several chunks");
    let reimported = import(server, pb::ImportSarifOptions::default(), &log).await;

    let before = all_findings(server, original).await;
    let after = all_findings(server, reimported).await;
    assert_eq!(after.len(), before.len());
    assert_eq!(finding_keys(&after), finding_keys(&before));
    let fixes_before = all_fixes(server, original).await;
    let fixes_after = all_fixes(server, reimported).await;
    assert_eq!(fixes_after.len(), fixes_before.len());
    assert_eq!(fix_paths(&fixes_after), fix_paths(&fixes_before));

    let comparison = server
        .analysis
        .compare_runs(pb::CompareRunsRequest {
            base_crew_output_id: original,
            head_crew_output_id: reimported,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("CompareRuns failed")
        .into_inner();
    assert_eq!(comparison.new_count, 0);
    assert_eq!(comparison.resolved_count, 0);
    assert_eq!(comparison.persisting_count, before.len() as i64);
}

async fn export_round_trip_may_fixture(mut server: TestServer) {
    let Some(path) = fixture(MAY_FIXTURE) else {
        return;
    };
    check_fixture_round_trip(&mut server, &path).await;
}

async fn export_round_trip_august_fixture(mut server: TestServer) {
    let Some(path) = fixture(AUGUST_FIXTURE) else {
        return;
    };
    check_fixture_round_trip(&mut server, &path).await;
}

async fn export_writes_sarif_run(mut server: TestServer) {
    let Some(path) = fixture(AUGUST_FIXTURE) else {
        return;
    };
    let original = import(&mut server, crewai_options(), &read_fixture(&path)).await;
    let findings = all_findings(&mut server, original).await;

    let log: Value = serde_json::from_slice(&export(&server, original).await.unwrap())
        .expect("the export is not JSON");

    assert_eq!(log["version"], "2.1.0");
    assert_eq!(
        log["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );
    let run = &log["runs"][0];
    assert_eq!(log["runs"].as_array().unwrap().len(), 1);
    assert_eq!(run["tool"]["driver"]["name"], "ruff");
    assert_eq!(run["tool"]["driver"]["version"], "0.17.6");
    assert_eq!(
        run["originalUriBaseIds"]["%SRCROOT%"]["uri"],
        format!("file://{FIXTURE_SOURCE_ROOT}/")
    );
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["id"].as_str().unwrap())
        .collect();
    let mut expected_rules: Vec<&str> = findings.iter().map(|f| f.rule_id.as_str()).collect();
    expected_rules.sort();
    expected_rules.dedup();
    assert_eq!(rules, expected_rules);

    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), findings.len());
    let first = &results[0];
    assert_eq!(
        first["locations"][0]["physicalLocation"]["artifactLocation"],
        json!({"uri": findings[0].file_path, "uriBaseId": "%SRCROOT%"})
    );
    assert_eq!(
        first["partialFingerprints"]["codeAnalyzer/v1"],
        findings[0].fingerprint
    );
    assert_eq!(first["ruleId"], findings[0].rule_id);
    assert_eq!(
        rules[first["ruleIndex"].as_u64().unwrap() as usize],
        findings[0].rule_id
    );
    let fixed = results
        .iter()
        .find(|result| result["fixes"].is_array())
        .expect("no result with fixes");
    let change = &fixed["fixes"][0]["artifactChanges"][0];
    assert_eq!(change["artifactLocation"]["uriBaseId"], "%SRCROOT%");
    assert!(change["replacements"].is_array());
}

async fn export_recorded_run_reimports(mut server: TestServer) {
    let run = server.create_crew_output("review-crew").await;
    let mut with_range = new_finding("src/app.py", "S105", "Possible hardcoded password");
    with_range.priority = Priority::Critical as i32;
    with_range.range = Some(pb::TextRange {
        start_line: 12,
        end_line: 13,
        start_column: 5,
        end_column: 20,
    });
    with_range.analysis = Some(to_struct(json!({"confidence": 0.9})));
    let mut with_fingerprint = new_finding("src/my tools/db.py", "B608", "SQL injection");
    with_fingerprint.fingerprint = "client-key-1".to_string();
    with_fingerprint.priority = Priority::Info as i32;
    let recorded = server
        .record_findings(
            run.id,
            vec![
                with_range,
                with_fingerprint,
                new_finding("README.md", "", "typo"),
            ],
        )
        .await;
    server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id: run.id,
            file_path: "src/app.py".to_string(),
            description: "Read the password from the environment".to_string(),
            changes: Some(to_struct(json!({"artifactChanges": [{
                "artifactLocation": {"uri": "whatever.py"},
                "replacements": [{"deletedRegion": {"startLine": 12}, "insertedContent": {"text": "x = env()"}}]
            }]}))),
            finding_ids: vec![recorded[0].id, recorded[1].id],
            ..Default::default()
        })
        .await
        .unwrap();
    server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id: run.id,
            file_path: "src/app.py".to_string(),
            description: "not a SARIF fix".to_string(),
            finding_ids: vec![recorded[0].id],
            ..Default::default()
        })
        .await
        .unwrap();

    let log = export(&server, run.id).await.unwrap();
    let parsed: Value = serde_json::from_slice(&log).expect("the export is not JSON");
    assert_eq!(parsed["version"], "2.1.0");
    let run_json = &parsed["runs"][0];
    assert_eq!(run_json["tool"]["driver"]["name"], "review-crew");
    let results = run_json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["level"], "error", "CRITICAL is error");
    assert_eq!(results[1]["level"], "none", "INFO is none");
    assert_eq!(
        results[0]["locations"][0]["physicalLocation"]["region"],
        json!({"startLine": 12, "endLine": 13, "startColumn": 5, "endColumn": 20})
    );
    assert_eq!(results[0]["properties"]["analysis"]["confidence"], 0.9);
    assert_eq!(
        results[1]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "src/my%20tools/db.py"
    );
    assert_eq!(
        results[0]["fixes"].as_array().map(Vec::len),
        Some(1),
        "a fix appears once, under its lowest finding, and only with SARIF changes"
    );
    assert!(results[1].get("fixes").is_none());

    let reimported = import(&mut server, pb::ImportSarifOptions::default(), &log).await;
    let after = all_findings(&mut server, reimported).await;
    assert_eq!(finding_keys(&after), finding_keys(&recorded));
    let fixes = all_fixes(&mut server, reimported).await;
    assert_eq!(fixes.len(), 1);
    assert_eq!(fixes[0].file_path, "src/app.py");
    assert_eq!(
        fixes[0].description,
        "Read the password from the environment"
    );
}

async fn export_unknown_run_not_found(server: TestServer) {
    let status = export(&server, 987_654).await.unwrap_err();
    assert_status(&status, Code::NotFound, "crew output 987654 not found");

    let status = export(&server, 0).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "crew_output_id:");
}

/// Expected hunks of one file of a SARIF log: the `@@` header and the `+`
/// lines of each replacement of each fix, in result order.
fn fixture_hunks(log: &Value, file_path: &str) -> Vec<(String, Vec<String>)> {
    let uri = format!("file://{FIXTURE_SOURCE_ROOT}/{file_path}");
    let mut hunks = Vec::new();
    for result in log["runs"][0]["results"].as_array().unwrap() {
        if result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] != uri.as_str() {
            continue;
        }
        for fix in result["fixes"].as_array().into_iter().flatten() {
            for change in fix["artifactChanges"].as_array().unwrap() {
                for replacement in change["replacements"].as_array().unwrap() {
                    let region = &replacement["deletedRegion"];
                    let start = region["startLine"].as_i64().unwrap();
                    let end = region["endLine"].as_i64().unwrap_or(start);
                    let text = replacement["insertedContent"]["text"]
                        .as_str()
                        .unwrap_or("");
                    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
                    if lines.last().is_some_and(String::is_empty) {
                        lines.pop();
                    }
                    let header = format!(
                        "@@ -{start},{} +{start},{} @@",
                        end - start + 1,
                        lines.len()
                    );
                    hunks.push((header, lines));
                }
            }
        }
    }
    hunks
}

/// Reads the hunks of a draft body: each `@@` header and the `+` lines
/// that follow it.
fn body_hunks(body: &str) -> Vec<(String, Vec<String>)> {
    let mut hunks: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_hunk = false;
    for line in body.lines() {
        if line.starts_with("@@ ") {
            hunks.push((line.to_string(), Vec::new()));
            in_hunk = true;
        } else if in_hunk && line.starts_with('+') {
            hunks.last_mut().unwrap().1.push(line[1..].to_string());
        } else if !(in_hunk && line.starts_with("-[deleted region:")) {
            in_hunk = false;
        }
    }
    hunks
}

/// Reads the rule and findings columns of the table of a draft body.
fn body_rule_counts(body: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in body.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() != 4 || !line.starts_with("| ") || cells[2].parse::<usize>().is_err() {
            continue;
        }
        *counts.entry(cells[1].to_string()).or_default() += cells[2].parse::<usize>().unwrap();
    }
    counts
}

async fn draft_matches_fixture_file(mut server: TestServer) {
    let Some(path) = fixture(AUGUST_FIXTURE) else {
        return;
    };
    let log = fixture_json(&path);
    let run = import(&mut server, crewai_options(), &read_fixture(&path)).await;

    let response = reports(&server)
        .draft_pull_request(pb::DraftPullRequestRequest {
            crew_output_id: run,
            file_path_prefix: DRAFT_FILE.to_string(),
        })
        .await
        .expect("DraftPullRequest failed")
        .into_inner();

    let uri = format!("file://{FIXTURE_SOURCE_ROOT}/{DRAFT_FILE}");
    let results: Vec<&Value> = log["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|result| {
            result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == uri.as_str()
        })
        .collect();
    let mut expected_counts: BTreeMap<String, usize> = BTreeMap::new();
    for result in &results {
        *expected_counts
            .entry(result["ruleId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        response.title,
        format!("Fix {} findings of ruff in 1 file", results.len())
    );
    assert_eq!(body_rule_counts(&response.body), expected_counts);
    let expected_hunks = fixture_hunks(&log, DRAFT_FILE);
    assert!(
        expected_hunks.len() > 5,
        "the file has fixes with several replacements"
    );
    assert_eq!(body_hunks(&response.body), expected_hunks);
    assert!(
        response
            .body
            .contains(&format!("--- a/{DRAFT_FILE}\n+++ b/{DRAFT_FILE}\n")),
        "{}",
        response.body
    );

    let draft = response.draft.expect("no draft");
    let fixed_results = results
        .iter()
        .filter(|result| result["fixes"].is_array())
        .count();
    assert_eq!(draft.status, FixStatus::PrDraft as i32);
    assert_eq!(draft.crew_output_id, run);
    assert_eq!(draft.file_path, DRAFT_FILE);
    assert_eq!(draft.description, response.title);
    assert_eq!(draft.finding_ids.len(), fixed_results);
    let stored = server
        .fixes
        .get_fix(pb::GetFixRequest { id: draft.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.status, FixStatus::PrDraft as i32);
    let changes = common::from_struct(stored.changes.as_ref().unwrap());
    assert_eq!(changes["title"], response.title.as_str());
    assert_eq!(changes["body"], response.body.as_str());
}

async fn draft_without_open_findings_fails(mut server: TestServer) {
    let run = server.create_crew_output("review-crew").await;
    server
        .record_findings(run.id, vec![new_finding("src/app.py", "S105", "password")])
        .await;

    let status = expect_error(
        reports(&server)
            .draft_pull_request(pb::DraftPullRequestRequest {
                crew_output_id: run.id,
                file_path_prefix: "docs/".to_string(),
            })
            .await,
    );
    assert_status(
        &status,
        Code::FailedPrecondition,
        &format!(
            "crew output {} has no OPEN, CONFIRMED or REOPENED findings",
            run.id
        ),
    );

    let status = expect_error(
        reports(&server)
            .draft_pull_request(pb::DraftPullRequestRequest {
                crew_output_id: 987_654,
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::NotFound, "crew output 987654 not found");
}

async fn draft_lists_findings_without_fixes(mut server: TestServer) {
    let run = server.create_crew_output("review-crew").await;
    server
        .record_findings(
            run.id,
            vec![
                new_finding("src/a/app.py", "S105", "password"),
                new_finding("src/b/db.py", "B608", "injection"),
            ],
        )
        .await;

    let response = reports(&server)
        .draft_pull_request(pb::DraftPullRequestRequest {
            crew_output_id: run.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.title, "Fix 2 findings of review-crew in 2 files");
    assert!(
        response.body.contains("| MEDIUM | B608 | 1 | 0 |"),
        "{}",
        response.body
    );
    assert!(response.body.contains("No fix addresses these findings."));
    let draft = response.draft.unwrap();
    assert_eq!(draft.file_path, "src");
    assert!(draft.finding_ids.is_empty());
}

backend_tests!(
    export_round_trip_may_fixture,
    export_round_trip_august_fixture,
    export_writes_sarif_run,
    export_recorded_run_reimports,
    export_unknown_run_not_found,
    draft_matches_fixture_file,
    draft_without_open_findings_fails,
    draft_lists_findings_without_fixes,
);
