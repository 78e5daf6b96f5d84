//! AnalysisService.ImportSarif: SARIF logs streamed in chunks become crew
//! outputs with findings and linked fixes.

mod common;

use code_analyzer::pb::import_sarif_request::Payload;
use code_analyzer::pb::{self, CrewOutputStatus, Priority};
use code_analyzer::server::ServerOptions;
use common::{
    SMALL_SARIF, SMALL_SARIF_AGENT_PATH, SMALL_SARIF_TOOLS_PATH, TestServer, assert_status,
    crewai_options, fixture, gzip, sarif_messages, test_options,
};
use tonic::Code;

/// Chunk size of the fixture imports: the size the CLI sends.
const MIB: usize = 1024 * 1024;

async fn all_findings(server: &mut TestServer, crew_output_id: i64) -> Vec<pb::Finding> {
    server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListFindings failed")
        .into_inner()
        .findings
}

async fn all_fixes(server: &mut TestServer, crew_output_id: i64) -> Vec<pb::Fix> {
    server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            crew_output_id,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListFixes failed")
        .into_inner()
        .fixes
}

async fn import_error(
    server: &mut TestServer,
    messages: Vec<pb::ImportSarifRequest>,
) -> tonic::Status {
    match server
        .analysis
        .import_sarif(tokio_stream::iter(messages))
        .await
    {
        Ok(response) => panic!("expected an error, got {:?}", response.into_inner()),
        Err(status) => status,
    }
}

fn chunk(bytes: &[u8]) -> pb::ImportSarifRequest {
    pb::ImportSarifRequest {
        payload: Some(Payload::Chunk(bytes.to_vec())),
    }
}

fn options_message(options: pb::ImportSarifOptions) -> pb::ImportSarifRequest {
    pb::ImportSarifRequest {
        payload: Some(Payload::Options(options)),
    }
}

/// Returns the number of findings and fixes stored over all crew outputs.
async fn stored_counts(server: &mut TestServer) -> (i64, i64) {
    let findings = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total_size;
    let fixes = server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total_size;
    (findings, fixes)
}

/// Checks the response and stored records of one import of SMALL_SARIF.
async fn assert_small_log_imported(server: &mut TestServer, response: &pb::ImportSarifResponse) {
    assert_eq!(response.finding_count, 4);
    assert_eq!(response.fix_count, 2);
    assert_eq!(response.file_count, 2);
    let summary: Vec<(&str, i64, i64)> = response
        .runs
        .iter()
        .map(|run| (run.tool_name.as_str(), run.finding_count, run.fix_count))
        .collect();
    assert_eq!(summary, vec![("ruff", 3, 2), ("bandit", 1, 0)]);
    assert_ne!(
        response.runs[0].crew_output_id,
        response.runs[1].crew_output_id
    );

    let ruff = all_findings(server, response.runs[0].crew_output_id).await;
    let ruff_fixes = all_fixes(server, response.runs[0].crew_output_id).await;
    assert_eq!(ruff.len(), 3);
    assert_eq!(ruff_fixes.len(), 2);
    assert_eq!(ruff_fixes[0].finding_ids, vec![ruff[0].id]);
    assert_eq!(ruff_fixes[1].finding_ids, vec![ruff[2].id]);
}

async fn import_creates_succeeded_runs(mut server: TestServer) {
    let response = server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();
    assert_small_log_imported(&mut server, &response).await;

    for (run, tool_name) in response.runs.iter().zip(["ruff", "bandit"]) {
        let output = server
            .crew
            .get_crew_output(pb::GetCrewOutputRequest {
                id: run.crew_output_id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            output.crew_name, tool_name,
            "crew_name defaults to the tool name"
        );
        assert_eq!(output.output_type, "sarif");
        assert_eq!(output.status, CrewOutputStatus::Succeeded as i32);
        assert!(output.finished_at.is_some());
        let results = common::from_struct(output.results.as_ref().unwrap());
        assert_eq!(results["tool"]["name"], tool_name);
    }
}

async fn import_maps_results_to_findings(mut server: TestServer) {
    let response = server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();
    let ruff = all_findings(&mut server, response.runs[0].crew_output_id).await;
    let bandit = all_findings(&mut server, response.runs[1].crew_output_id).await;

    assert_eq!(ruff[0].file_path, SMALL_SARIF_AGENT_PATH);
    assert_eq!(ruff[0].rule_id, "F401");
    assert_eq!(ruff[0].message, "`os` imported but unused");
    assert_eq!(
        ruff[0].priority,
        Priority::High as i32,
        "level error is HIGH"
    );
    assert_eq!(
        ruff[0].range,
        Some(pb::TextRange {
            start_line: 3,
            end_line: 3,
            start_column: 8,
            end_column: 10
        })
    );
    assert_eq!(ruff[0].fingerprint.len(), 32);
    assert_eq!(ruff[0].fingerprint_version, 1);
    let analysis = common::from_struct(ruff[0].analysis.as_ref().unwrap());
    assert_eq!(
        analysis["ruleId"], "F401",
        "the analysis is the whole SARIF result"
    );
    assert_eq!(
        ruff[1].priority,
        Priority::Low as i32,
        "the rule's default level note is LOW"
    );
    assert_eq!(
        ruff[1].range.unwrap().end_line,
        40,
        "a missing endLine is the startLine"
    );
    assert_eq!(
        ruff[2].file_path, SMALL_SARIF_TOOLS_PATH,
        "URI escapes are decoded"
    );
    assert_eq!(ruff[2].fingerprint, "primaryLocationLineHash:5f2b1c:1");
    assert_eq!(ruff[2].fingerprint_version, 0);
    assert_eq!(
        bandit[0].priority,
        Priority::Critical as i32,
        "security-severity 9.1 is CRITICAL"
    );

    let fixes = all_fixes(&mut server, response.runs[0].crew_output_id).await;
    assert_eq!(fixes[0].file_path, SMALL_SARIF_AGENT_PATH);
    assert_eq!(fixes[0].description, "Remove unused import: `os`");
    assert_eq!(fixes[1].file_path, SMALL_SARIF_TOOLS_PATH);
    let changes = common::from_struct(fixes[0].changes.as_ref().unwrap());
    assert!(
        changes["artifactChanges"].is_array(),
        "the changes are the whole SARIF fix: {changes}"
    );
}

async fn import_uses_given_names(mut server: TestServer) {
    let options = pb::ImportSarifOptions {
        crew_name: "nightly-lint".to_string(),
        output_type: "lint".to_string(),
        source_root: String::new(),
    };
    let response = server
        .import_sarif(options, SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();
    let output = server
        .crew
        .get_crew_output(pb::GetCrewOutputRequest {
            id: response.runs[1].crew_output_id,
        })
        .await
        .unwrap()
        .into_inner();
    let findings = all_findings(&mut server, response.runs[0].crew_output_id).await;

    assert_eq!(output.crew_name, "nightly-lint");
    assert_eq!(output.output_type, "lint");
    assert_eq!(response.runs[1].tool_name, "bandit");
    assert_eq!(
        findings[0].file_path, "/home/dev/crewAI/lib/crewai/agent.py",
        "no source root keeps the path"
    );
}

async fn import_accepts_file_uri_root(mut server: TestServer) {
    let options = pb::ImportSarifOptions {
        source_root: "file:///home/dev/crewAI/".to_string(),
        ..Default::default()
    };
    let response = server
        .import_sarif(options, SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();
    let findings = all_findings(&mut server, response.runs[0].crew_output_id).await;

    assert_eq!(findings[0].file_path, SMALL_SARIF_AGENT_PATH);
}

async fn import_accepts_gzip(mut server: TestServer) {
    let response = server
        .import_sarif(crewai_options(), &gzip(SMALL_SARIF.as_bytes()), MIB)
        .await
        .unwrap();

    assert_small_log_imported(&mut server, &response).await;
}

async fn import_accepts_small_chunks(mut server: TestServer) {
    let response = server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), 7)
        .await
        .unwrap();
    assert_small_log_imported(&mut server, &response).await;

    let compressed = gzip(SMALL_SARIF.as_bytes());
    let response = server
        .import_sarif(crewai_options(), &compressed, 3)
        .await
        .unwrap();
    assert_eq!(response.finding_count, 4);
}

async fn import_twice_stores_two_runs_each(mut server: TestServer) {
    let first = server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();
    let second = server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), MIB)
        .await
        .unwrap();

    assert!(second.runs[0].crew_output_id > first.runs[1].crew_output_id);
    assert_eq!(stored_counts(&mut server).await, (8, 4));
}

async fn import_requires_options_first(mut server: TestServer) {
    let status = import_error(&mut server, vec![chunk(SMALL_SARIF.as_bytes())]).await;

    assert_status(
        &status,
        Code::InvalidArgument,
        "options: the first message must carry the options",
    );
}

async fn import_rejects_second_options(mut server: TestServer) {
    let mut messages = sarif_messages(crewai_options(), SMALL_SARIF.as_bytes(), MIB);
    messages.push(options_message(crewai_options()));
    let status = import_error(&mut server, messages).await;

    assert_status(
        &status,
        Code::InvalidArgument,
        "options: only the first message may carry options",
    );
}

async fn import_rejects_empty_stream(mut server: TestServer) {
    let status = import_error(&mut server, Vec::new()).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "options: the stream is empty",
    );

    let status = import_error(&mut server, vec![options_message(crewai_options())]).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: the stream carried no log bytes",
    );
}

async fn import_rejects_long_options(mut server: TestServer) {
    let cases = [
        (
            pb::ImportSarifOptions {
                crew_name: "c".repeat(257),
                ..Default::default()
            },
            "options.crew_name:",
        ),
        (
            pb::ImportSarifOptions {
                output_type: "t".repeat(257),
                ..Default::default()
            },
            "options.output_type:",
        ),
        (
            pb::ImportSarifOptions {
                source_root: "/".repeat(4097),
                ..Default::default()
            },
            "options.source_root:",
        ),
    ];
    for (options, prefix) in cases {
        let status = import_error(
            &mut server,
            sarif_messages(options, SMALL_SARIF.as_bytes(), MIB),
        )
        .await;
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn import_rejects_other_versions(mut server: TestServer) {
    let log = SMALL_SARIF.replacen("\"2.1.0\"", "\"2.0.0\"", 1);
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), log.as_bytes(), MIB),
    )
    .await;

    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: SARIF version \"2.0.0\" is not supported",
    );
    assert_eq!(stored_counts(&mut server).await, (0, 0));
}

async fn import_rejects_invalid_json(mut server: TestServer) {
    let truncated = &SMALL_SARIF.as_bytes()[..SMALL_SARIF.len() / 2];
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), truncated, MIB),
    )
    .await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: the log is not valid SARIF JSON",
    );

    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), b"[1, 2]", MIB),
    )
    .await;
    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: the log is not valid SARIF JSON",
    );
}

async fn import_rejects_invalid_gzip(mut server: TestServer) {
    let mut compressed = gzip(SMALL_SARIF.as_bytes());
    compressed.truncate(compressed.len() / 2);
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), &compressed, MIB),
    )
    .await;

    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: the gzip stream is invalid",
    );
}

async fn import_rejects_invalid_result(mut server: TestServer) {
    let log = r#"{"version": "2.1.0", "runs": [
        {"tool": {"driver": {"name": "ok"}}, "results": [{"message": {"text": "fine"}}]},
        {"tool": {"driver": {"name": "broken"}}, "results": [{"message": {"text": "fine"}}, {"locations": 5}]}
    ]}"#;
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), log.as_bytes(), MIB),
    )
    .await;

    assert_status(
        &status,
        Code::InvalidArgument,
        "chunk: run 1, result 1: invalid result",
    );
    assert_eq!(
        stored_counts(&mut server).await,
        (0, 0),
        "no run of a rejected log is stored"
    );
}

async fn import_log_without_results(mut server: TestServer) {
    let log = r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "quiet"}}}]}"#;
    let response = server
        .import_sarif(crewai_options(), log.as_bytes(), MIB)
        .await
        .unwrap();

    assert_eq!(response.runs.len(), 1);
    assert_eq!(response.runs[0].tool_name, "quiet");
    assert_eq!(response.finding_count, 0);
    assert_eq!(response.file_count, 0);
}

async fn import_result_without_location_counts_no_file(mut server: TestServer) {
    let log = r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
        "results": [{"ruleId": "R1", "message": {"text": "no location"}}]}]}"#;
    let response = server
        .import_sarif(crewai_options(), log.as_bytes(), MIB)
        .await
        .unwrap();
    let findings = all_findings(&mut server, response.runs[0].crew_output_id).await;

    assert_eq!(response.finding_count, 1);
    assert_eq!(findings[0].file_path, "");
    assert_eq!(
        response.file_count, 0,
        "a result without a location names no file"
    );
}

async fn import_over_limit_invalid(mut server: TestServer) {
    let padded = format!("{SMALL_SARIF}{}", " ".repeat(1024));
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), padded.as_bytes(), 100),
    )
    .await;
    assert_status(&status, Code::InvalidArgument, "chunk:");
    assert!(
        status.message().contains("limit of 1024 bytes"),
        "{}",
        status.message()
    );

    // Compressed below the limit, but larger once decompressed.
    let compressed = gzip(padded.as_bytes());
    assert!(compressed.len() < 1024);
    let status = import_error(
        &mut server,
        sarif_messages(crewai_options(), &compressed, 100),
    )
    .await;
    assert_status(&status, Code::InvalidArgument, "chunk:");
    assert!(
        status
            .message()
            .contains("limit of 1024 bytes once decompressed"),
        "{}",
        status.message()
    );

    assert_eq!(stored_counts(&mut server).await, (0, 0));
}

async fn import_fixture_counts(mut server: TestServer) {
    let Some(path) = fixture("sarif/ruff-crewai-2026-08.sarif.gz") else {
        return;
    };
    let compressed = std::fs::read(&path).unwrap();
    let response = server
        .import_sarif(crewai_options(), &compressed, MIB)
        .await
        .unwrap();

    assert_eq!(response.finding_count, 21_197);
    assert_eq!(response.fix_count, 845);
    assert_eq!(response.file_count, 828);
    assert_eq!(response.runs.len(), 1);
    assert_eq!(response.runs[0].tool_name, "ruff");
    let crew_output_id = response.runs[0].crew_output_id;
    let findings = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // List totals stop counting at 10,000 matching rows.
    assert_eq!(findings.total_size, 10_000);
    let fixes = server
        .fixes
        .list_fixes(pb::ListFixesRequest {
            crew_output_id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fixes.total_size, 845);
    assert!(
        findings.findings[0].file_path.starts_with("lib/"),
        "{}",
        findings.findings[0].file_path
    );
}

async fn import_plain_fixture_beyond_message_limit(mut server: TestServer) {
    let Some(path) = fixture("sarif/ruff-crewai-2026-05.sarif.gz") else {
        return;
    };
    let mut plain = Vec::new();
    let file = std::fs::File::open(&path).unwrap();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut plain).unwrap();
    assert!(
        plain.len() > 4 * MIB,
        "the plain log is larger than one default gRPC message"
    );

    let response = server
        .import_sarif(crewai_options(), &plain, MIB)
        .await
        .unwrap();

    assert_eq!(response.finding_count, 16_190);
    assert_eq!(response.fix_count, 658);
    assert_eq!(response.file_count, 673);
}

backend_tests! {
    import_creates_succeeded_runs,
    import_maps_results_to_findings,
    import_uses_given_names,
    import_accepts_file_uri_root,
    import_accepts_gzip,
    import_accepts_small_chunks,
    import_twice_stores_two_runs_each,
    import_requires_options_first,
    import_rejects_second_options,
    import_rejects_empty_stream,
    import_rejects_long_options,
    import_rejects_other_versions,
    import_rejects_invalid_json,
    import_rejects_invalid_gzip,
    import_rejects_invalid_result,
    import_log_without_results,
    import_result_without_location_counts_no_file,
    #[options(ServerOptions { max_sarif_bytes: 1024, ..test_options() })]
    import_over_limit_invalid,
    import_fixture_counts,
    import_plain_fixture_beyond_message_limit,
}
