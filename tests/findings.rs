//! AnalysisService findings: RecordFindings, GetFinding, ListFindings and
//! UpdateFinding.

mod common;

use std::collections::HashSet;

use code_analyzer::pb::{self, FindingStatus, Priority};
use common::{TestServer, assert_status, expect_error, nested_struct, new_finding, to_struct};
use serde_json::json;
use tonic::Code;

fn record_request(crew_output_id: i64, findings: Vec<pb::NewFinding>) -> pb::RecordFindingsRequest {
    pb::RecordFindingsRequest {
        crew_output_id,
        findings,
    }
}

fn with_range(mut finding: pb::NewFinding, start_line: i32, end_line: i32) -> pb::NewFinding {
    finding.range = Some(pb::TextRange {
        start_line,
        end_line,
        start_column: 0,
        end_column: 0,
    });
    finding
}

fn with_priority(mut finding: pb::NewFinding, priority: Priority) -> pb::NewFinding {
    finding.priority = priority as i32;
    finding
}

/// Lists every page of `request` and returns the finding ids in order.
async fn list_ids(server: &mut TestServer, request: pb::ListFindingsRequest) -> Vec<i64> {
    list_pages(server, request).await.concat()
}

async fn update_status(
    server: &mut TestServer,
    id: i64,
    status: i32,
    reason: &str,
) -> Result<tonic::Response<pb::Finding>, tonic::Status> {
    server
        .analysis
        .update_finding(pb::UpdateFindingRequest {
            id,
            status,
            reason: reason.to_string(),
            dismiss_reason: if status == FindingStatus::Dismissed as i32 {
                pb::DismissReason::UsedInTests as i32
            } else {
                0
            },
        })
        .await
}

fn is_lower_hex(text: &str) -> bool {
    text.chars()
        .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch))
}

async fn record_stores_in_request_order(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let mut detailed = with_priority(
        with_range(
            new_finding("lib/a.py", "B007", "unused loop variable"),
            4,
            6,
        ),
        Priority::High,
    );
    detailed.range.as_mut().unwrap().start_column = 5;
    detailed.range.as_mut().unwrap().end_column = 9;
    detailed.analysis = Some(to_struct(json!({"confidence": 0.9, "lines": [4, 5, 6]})));
    let request = record_request(
        run.id,
        vec![
            detailed,
            new_finding("lib/b.py", "E501", "line too long"),
            new_finding("lib/c.py", "F401", "unused import"),
        ],
    );

    let stored = server
        .analysis
        .record_findings(request)
        .await
        .unwrap()
        .into_inner()
        .findings;

    assert_eq!(stored.len(), 3);
    let paths: Vec<&str> = stored
        .iter()
        .map(|finding| finding.file_path.as_str())
        .collect();
    assert_eq!(paths, ["lib/a.py", "lib/b.py", "lib/c.py"]);
    assert!(stored[0].id < stored[1].id);
    assert!(stored[1].id < stored[2].id);
    assert!(
        stored
            .iter()
            .all(|finding| finding.crew_output_id == run.id)
    );
    assert!(
        stored
            .iter()
            .all(|finding| finding.status == FindingStatus::Open as i32)
    );
    assert!(stored.iter().all(|finding| finding.revision == 1));
    assert_eq!(stored[0].priority, Priority::High as i32);
    assert_eq!(
        stored[1].priority,
        Priority::Medium as i32,
        "UNSPECIFIED means MEDIUM"
    );
    assert_eq!(stored[0].rule_id, "B007");
    assert_eq!(stored[0].message, "unused loop variable");
    assert_eq!(
        stored[0].range,
        Some(pb::TextRange {
            start_line: 4,
            end_line: 6,
            start_column: 5,
            end_column: 9
        })
    );
    assert_eq!(
        stored[0].analysis,
        Some(to_struct(json!({"confidence": 0.9, "lines": [4, 5, 6]})))
    );
    assert_eq!(stored[1].analysis, Some(Default::default()));

    let fetched = server
        .analysis
        .get_finding(pb::GetFindingRequest { id: stored[0].id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, stored[0]);
}

async fn record_unknown_crew_output_not_found(mut server: TestServer) {
    let request = record_request(999, vec![new_finding("lib/a.py", "B007", "m")]);
    let status = expect_error(server.analysis.record_findings(request).await);

    assert_status(&status, Code::NotFound, "crew output 999 not found");
}

async fn record_nonpositive_crew_output_invalid(mut server: TestServer) {
    let request = record_request(0, vec![new_finding("lib/a.py", "B007", "m")]);
    let status = expect_error(server.analysis.record_findings(request).await);

    assert_status(
        &status,
        Code::InvalidArgument,
        "crew_output_id: must be a positive id",
    );
}

async fn record_empty_batch_invalid(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let status = expect_error(
        server
            .analysis
            .record_findings(record_request(run.id, Vec::new()))
            .await,
    );

    assert_status(
        &status,
        Code::InvalidArgument,
        "findings: must not be empty",
    );
}

async fn record_over_batch_limit_invalid(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = (0..10_001)
        .map(|index| new_finding(&format!("f{index}.py"), "R", "m"))
        .collect();
    let status = expect_error(
        server
            .analysis
            .record_findings(record_request(run.id, findings))
            .await,
    );

    assert_status(&status, Code::InvalidArgument, "findings:");
    assert!(
        status.message().contains("10001 items"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("limit of 10000"),
        "{}",
        status.message()
    );
}

async fn record_batch_at_limit_stored(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = (0..10_000)
        .map(|index| new_finding(&format!("f{index}.py"), "R", "m"))
        .collect();
    let stored = server.record_findings(run.id, findings).await;

    assert_eq!(stored.len(), 10_000);
    // Stored in multi-row statements of several hundred rows: each id
    // still names the finding at its place in the request.
    assert!(stored.windows(2).all(|pair| pair[0].id < pair[1].id));
    for index in [0, 499, 500, 501, 5_000, 9_999] {
        let fetched = server
            .analysis
            .get_finding(pb::GetFindingRequest {
                id: stored[index].id,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.file_path, format!("f{index}.py"));
        assert_eq!(fetched, stored[index]);
    }
    let page = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id: run.id,
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 10_000);

    let capped = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id: run.id,
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        capped.findings.len(),
        1_000,
        "page sizes above 1000 are treated as 1000"
    );
}

async fn record_bad_field_names_index(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let request = record_request(
        run.id,
        vec![
            new_finding("lib/a.py", "B007", "fine"),
            new_finding("", "B007", "no path"),
        ],
    );
    let status = expect_error(server.analysis.record_findings(request).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "findings[1].file_path: is required",
    );

    let stored = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            crew_output_id: run.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.total_size, 0, "a rejected batch stores nothing");
}

async fn record_rejects_invalid_fields(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let mut bad_priority = new_finding("lib/a.py", "B007", "m");
    bad_priority.priority = 9;
    let mut deep_analysis = new_finding("lib/a.py", "B007", "m");
    deep_analysis.analysis = Some(nested_struct(33));
    let cases = [
        (
            new_finding(&"p".repeat(4097), "B007", "m"),
            "findings[0].file_path:",
        ),
        (
            new_finding("lib/a.py", &"r".repeat(257), "m"),
            "findings[0].rule_id:",
        ),
        (
            new_finding("lib/a.py", "B007", &"m".repeat(64 * 1024 + 1)),
            "findings[0].message:",
        ),
        (bad_priority, "findings[0].priority: 9 is not a known value"),
        (
            deep_analysis,
            "findings[0].analysis: is nested deeper than 32 levels",
        ),
        (
            with_range(new_finding("lib/a.py", "B007", "m"), -1, 0),
            "findings[0].range.start_line: must not be negative",
        ),
    ];
    for (finding, prefix) in cases {
        let status = expect_error(
            server
                .analysis
                .record_findings(record_request(run.id, vec![finding]))
                .await,
        );
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn record_rejects_path_empty_once_normalised(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    for path in [".", "./", ".\\", "././"] {
        let result = server
            .analysis
            .record_findings(record_request(run.id, vec![new_finding(path, "B007", "m")]))
            .await;
        let status = expect_error(result);
        assert_status(&status, Code::InvalidArgument, "findings[0].file_path:");
    }
}

async fn record_end_before_start_invalid(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let request = record_request(
        run.id,
        vec![with_range(new_finding("lib/a.py", "B007", "m"), 10, 5)],
    );
    let status = expect_error(server.analysis.record_findings(request).await);

    assert_status(
        &status,
        Code::InvalidArgument,
        "findings[0].range.end_line: 5 is before start_line 10",
    );
}

async fn record_missing_end_line_uses_start(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(
            run.id,
            vec![with_range(new_finding("lib/a.py", "B007", "m"), 12, 0)],
        )
        .await;

    assert_eq!(stored[0].range.unwrap().start_line, 12);
    assert_eq!(stored[0].range.unwrap().end_line, 12);
}

async fn record_normalises_paths(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(
            run.id,
            vec![
                new_finding(".\\lib\\a.py", "B007", "m"),
                new_finding("lib//x/./b.py", "B007", "m"),
                new_finding("./lib/c.py", "B007", "m"),
            ],
        )
        .await;

    let paths: Vec<&str> = stored
        .iter()
        .map(|finding| finding.file_path.as_str())
        .collect();
    assert_eq!(paths, ["lib/a.py", "lib/x/b.py", "lib/c.py"]);
}

async fn record_derives_stable_fingerprint(mut server: TestServer) {
    let first_run = server.create_crew_output("ruff").await;
    let second_run = server.create_crew_output("ruff").await;
    let first = server
        .record_findings(
            first_run.id,
            vec![
                with_range(
                    new_finding("lib/a.py", "B007", "unused loop variable"),
                    3,
                    3,
                ),
                new_finding("lib/a.py", "B007", "another message"),
            ],
        )
        .await;
    let second = server
        .record_findings(
            second_run.id,
            vec![with_range(
                new_finding(".\\lib\\a.py", "B007", "unused loop variable"),
                40,
                41,
            )],
        )
        .await;

    let fingerprint = &first[0].fingerprint;
    assert_eq!(fingerprint.len(), 32, "fingerprint {fingerprint:?}");
    assert!(is_lower_hex(fingerprint), "fingerprint {fingerprint:?}");
    assert_eq!(first[0].fingerprint_version, 1);
    assert_eq!(
        &second[0].fingerprint, fingerprint,
        "moved lines and another run keep the fingerprint"
    );
    assert_ne!(
        &first[1].fingerprint, fingerprint,
        "another message changes the fingerprint"
    );
}

async fn record_keeps_client_fingerprint(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let mut finding = new_finding("lib/a.py", "B007", "m");
    finding.fingerprint = "primaryLocationLineHash:abc".to_string();
    let stored = server.record_findings(run.id, vec![finding]).await;

    assert_eq!(stored[0].fingerprint, "primaryLocationLineHash:abc");
    assert_eq!(stored[0].fingerprint_version, 0);
}

async fn get_unknown_id_not_found(mut server: TestServer) {
    let status = expect_error(
        server
            .analysis
            .get_finding(pb::GetFindingRequest { id: 999 })
            .await,
    );
    assert_status(&status, Code::NotFound, "finding 999 not found");

    let status = expect_error(
        server
            .analysis
            .get_finding(pb::GetFindingRequest { id: 0 })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "id: must be a positive id");
}

async fn list_filters_by_run_path_and_rule(mut server: TestServer) {
    let first_run = server.create_crew_output("ruff").await;
    let second_run = server.create_crew_output("ruff").await;
    let first = server
        .record_findings(
            first_run.id,
            vec![
                new_finding("lib/a.py", "B007", "m"),
                new_finding("lib/b.py", "E501", "m"),
            ],
        )
        .await;
    let second = server
        .record_findings(
            second_run.id,
            vec![
                new_finding("lib/a.py", "E501", "m"),
                new_finding("src/a.py", "B007", "m"),
            ],
        )
        .await;

    let by_run = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            crew_output_id: first_run.id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_run, vec![first[0].id, first[1].id]);

    let by_path = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path: ".\\lib\\a.py".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_path, vec![first[0].id, second[0].id]);

    let by_rule = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            rule_id: "B007".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_rule, vec![first[0].id, second[1].id]);

    let by_prefix = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "lib/".to_string(),
            ..Default::default()
        },
    )
    .await;
    // A path filter lists by path, then in record order.
    assert_eq!(by_prefix, vec![first[0].id, second[0].id, first[1].id]);

    let combined = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            crew_output_id: second_run.id,
            rule_id: "E501".to_string(),
            file_path_prefix: "lib/".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(combined, vec![second[0].id]);
}

async fn list_prefix_matches_wildcards_literally(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(
            run.id,
            vec![
                new_finding("lib/a_b/x.py", "R", "m"),
                new_finding("lib/aXb/y.py", "R", "m"),
                new_finding("lib/a%b/z.py", "R", "m"),
                new_finding("lib/aYYb/w.py", "R", "m"),
                new_finding("lib/a\\b/v.py", "R", "m"),
            ],
        )
        .await;

    let underscore = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "lib/a_b".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(underscore, vec![stored[0].id]);

    let percent = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "lib/a%b".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(percent, vec![stored[2].id]);

    let percent_only = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "%".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(percent_only, Vec::<i64>::new());

    let upper = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "LIB/".to_string(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(upper, Vec::<i64>::new(), "the prefix is case-sensitive");
}

async fn list_filters_by_min_priority(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(
            run.id,
            vec![
                with_priority(new_finding("a.py", "R", "m"), Priority::Info),
                with_priority(new_finding("a.py", "R", "m"), Priority::Low),
                with_priority(new_finding("a.py", "R", "m"), Priority::Medium),
                with_priority(new_finding("a.py", "R", "m"), Priority::High),
                with_priority(new_finding("a.py", "R", "m"), Priority::Critical),
            ],
        )
        .await;

    let high = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            min_priority: Priority::High as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(high, vec![stored[3].id, stored[4].id]);

    let low = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            min_priority: Priority::Low as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(low.len(), 4);

    let status = expect_error(
        server
            .analysis
            .list_findings(pb::ListFindingsRequest {
                min_priority: 6,
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "min_priority: 6 is not a known value",
    );
}

async fn list_filters_by_status(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(
            run.id,
            vec![
                new_finding("a.py", "R", "m"),
                new_finding("b.py", "R", "m"),
                new_finding("c.py", "R", "m"),
            ],
        )
        .await;
    update_status(
        &mut server,
        stored[1].id,
        FindingStatus::Confirmed as i32,
        "",
    )
    .await
    .unwrap();

    let confirmed = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            status: FindingStatus::Confirmed as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(confirmed, vec![stored[1].id]);

    let open = list_ids(
        &mut server,
        pb::ListFindingsRequest {
            status: FindingStatus::Open as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(open, vec![stored[0].id, stored[2].id]);
}

async fn list_rejects_invalid_filters(mut server: TestServer) {
    let cases = [
        (
            pb::ListFindingsRequest {
                crew_output_id: -1,
                ..Default::default()
            },
            "crew_output_id:",
        ),
        (
            pb::ListFindingsRequest {
                status: 17,
                ..Default::default()
            },
            "status:",
        ),
        (
            pb::ListFindingsRequest {
                file_path: "p".repeat(4097),
                ..Default::default()
            },
            "file_path:",
        ),
        (
            pb::ListFindingsRequest {
                file_path_prefix: "p".repeat(4097),
                ..Default::default()
            },
            "file_path_prefix:",
        ),
        (
            pb::ListFindingsRequest {
                rule_id: "r".repeat(257),
                ..Default::default()
            },
            "rule_id:",
        ),
        (
            pb::ListFindingsRequest {
                page_size: -5,
                ..Default::default()
            },
            "page_size:",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.analysis.list_findings(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn list_pages_in_record_order(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = (0..7)
        .map(|index| new_finding(&format!("f{index}.py"), "R", "m"))
        .collect();
    let stored: Vec<i64> = server
        .record_findings(run.id, findings)
        .await
        .iter()
        .map(|finding| finding.id)
        .collect();

    let mut request = pb::ListFindingsRequest {
        page_size: 3,
        ..Default::default()
    };
    let mut page_lengths = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = server
            .analysis
            .list_findings(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total_size, 7);
        page_lengths.push(page.findings.len());
        seen.extend(page.findings.iter().map(|finding| finding.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    assert_eq!(page_lengths, vec![3, 3, 1]);
    assert_eq!(seen, stored);
}

/// Reads every page of `request`, `page_size` findings at a time, and
/// returns the ids of each page.
async fn list_pages(
    server: &mut TestServer,
    mut request: pb::ListFindingsRequest,
) -> Vec<Vec<i64>> {
    let mut pages = Vec::new();
    loop {
        let page = server
            .analysis
            .list_findings(request.clone())
            .await
            .expect("ListFindings failed")
            .into_inner();
        pages.push(page.findings.iter().map(|finding| finding.id).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        request.page_token = page.next_page_token;
    }
}

async fn list_by_path_pages_group_files(mut server: TestServer) {
    let first_run = server.create_crew_output("ruff").await;
    let second_run = server.create_crew_output("ruff").await;
    let first = server
        .record_findings(
            first_run.id,
            vec![
                new_finding("src/b.py", "R", "m"),
                new_finding("src/a.py", "R", "m"),
                new_finding("src/c:d.py", "R", "m"),
                new_finding("src/a.py", "R", "m"),
                new_finding("lib/x.py", "R", "m"),
            ],
        )
        .await;
    let second = server
        .record_findings(
            second_run.id,
            vec![
                new_finding("src/a.py", "R", "m"),
                new_finding("src/b.py", "R", "m"),
                new_finding("src/B.py", "R", "m"),
            ],
        )
        .await;

    // Paths compare byte by byte ("B" before "a"), a file's findings stay
    // in record order across runs, and a page boundary inside one file
    // (and a path with a colon) continues where it stopped.
    let pages = list_pages(
        &mut server,
        pb::ListFindingsRequest {
            file_path_prefix: "src/".to_string(),
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        pages,
        vec![
            vec![second[2].id, first[1].id],
            vec![first[3].id, second[0].id],
            vec![first[0].id, second[1].id],
            vec![first[2].id],
        ]
    );

    let in_run = list_pages(
        &mut server,
        pb::ListFindingsRequest {
            crew_output_id: first_run.id,
            file_path_prefix: "src/".to_string(),
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        in_run,
        vec![
            vec![first[1].id, first[3].id, first[0].id],
            vec![first[2].id],
        ]
    );

    let one_file = list_pages(
        &mut server,
        pb::ListFindingsRequest {
            file_path: "src/a.py".to_string(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        one_file,
        vec![vec![first[1].id], vec![first[3].id], vec![second[0].id]]
    );

    // A token of a listing by path is valid only for the same filters.
    let page = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            file_path_prefix: "src/".to_string(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = expect_error(
        server
            .analysis
            .list_findings(pb::ListFindingsRequest {
                file_path_prefix: "lib/".to_string(),
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "page_token: is not a token this server issued for the same filters",
    );
}

async fn list_paging_stable_under_inserts(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = (0..5)
        .map(|index| new_finding(&format!("f{index}.py"), "R", "m"))
        .collect();
    let original: Vec<i64> = server
        .record_findings(run.id, findings)
        .await
        .iter()
        .map(|finding| finding.id)
        .collect();

    let mut request = pb::ListFindingsRequest {
        crew_output_id: run.id,
        page_size: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut added = Vec::new();
    loop {
        let page = server
            .analysis
            .list_findings(request.clone())
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.findings.iter().map(|finding| finding.id));
        if page.next_page_token.is_empty() {
            break;
        }
        if added.len() < 2 {
            let new = server
                .record_findings(run.id, vec![new_finding("late.py", "R", "m")])
                .await;
            added.push(new[0].id);
        }
        request.page_token = page.next_page_token;
    }

    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates in {seen:?}");
    assert_eq!(&seen[..5], &original[..], "earlier rows keep their order");
    assert_eq!(&seen[5..], &added[..], "rows added meanwhile come last");
}

/// Reads the `total_size` of each page of a listing, recording one more
/// finding in `run` after the first page.
async fn totals_by_page(
    server: &mut TestServer,
    mut request: pb::ListFindingsRequest,
    run: i64,
) -> Vec<i64> {
    let mut totals = Vec::new();
    loop {
        let page = server
            .analysis
            .list_findings(request.clone())
            .await
            .expect("ListFindings failed")
            .into_inner();
        totals.push(page.total_size);
        if page.next_page_token.is_empty() {
            return totals;
        }
        if totals.len() == 1 {
            server
                .record_findings(run, vec![new_finding("src/z.py", "R", "m")])
                .await;
        }
        request.page_token = page.next_page_token;
    }
}

async fn later_pages_repeat_first_total(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = ["src/a.py", "src/b.py", "src/c.py", "src/d.py", "lib/e.py"]
        .iter()
        .map(|path| new_finding(path, "R", "m"))
        .collect();
    server.record_findings(run.id, findings).await;

    // The first page counts; later pages repeat its count, although a
    // finding was recorded after it.
    let by_run = pb::ListFindingsRequest {
        crew_output_id: run.id,
        page_size: 2,
        ..Default::default()
    };
    let totals = totals_by_page(&mut server, by_run.clone(), run.id).await;
    assert_eq!(totals, vec![5, 5, 5]);

    // By path prefix, each page reports the whole prefix, not the findings
    // after its cursor.
    let by_prefix = pb::ListFindingsRequest {
        file_path_prefix: "src/".to_string(),
        page_size: 2,
        ..Default::default()
    };
    let totals = totals_by_page(&mut server, by_prefix.clone(), run.id).await;
    assert_eq!(totals, vec![5, 5, 5]);

    // A new listing counts again.
    let totals = totals_by_page(&mut server, by_run, run.id).await;
    assert_eq!(totals[0], 7);
    let totals = totals_by_page(&mut server, by_prefix, run.id).await;
    assert_eq!(totals[0], 7);
}

async fn list_token_with_other_filters_invalid(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let findings = (0..3)
        .map(|index| new_finding(&format!("f{index}.py"), "R", "m"))
        .collect();
    server.record_findings(run.id, findings).await;
    let first = server
        .analysis
        .list_findings(pb::ListFindingsRequest {
            rule_id: "R".to_string(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let status = expect_error(
        server
            .analysis
            .list_findings(pb::ListFindingsRequest {
                rule_id: "Q".to_string(),
                page_size: 1,
                page_token: first.next_page_token,
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "page_token:");
}

async fn update_dismissed_requires_reason(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(run.id, vec![new_finding("a.py", "R", "m")])
        .await;

    for reason in ["", "  "] {
        let status = expect_error(
            update_status(
                &mut server,
                stored[0].id,
                FindingStatus::Dismissed as i32,
                reason,
            )
            .await,
        );
        assert_status(
            &status,
            Code::InvalidArgument,
            "reason: is required when status is DISMISSED",
        );
    }

    let status = expect_error(
        server
            .analysis
            .update_finding(pb::UpdateFindingRequest {
                id: stored[0].id,
                status: FindingStatus::Dismissed as i32,
                reason: "test fixture, not shipped".to_string(),
                dismiss_reason: 0,
            })
            .await,
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        "dismiss_reason: is required when status is DISMISSED: FALSE_POSITIVE, WONT_FIX or \
         USED_IN_TESTS",
    );

    let dismissed = update_status(
        &mut server,
        stored[0].id,
        FindingStatus::Dismissed as i32,
        "test fixture, not shipped",
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(dismissed.status, FindingStatus::Dismissed as i32);
    assert_eq!(dismissed.status_reason, "test fixture, not shipped");
    assert_eq!(dismissed.revision, 2);

    let fetched = server
        .analysis
        .get_finding(pb::GetFindingRequest { id: stored[0].id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, dismissed);
}

async fn update_walks_statuses(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(run.id, vec![new_finding("a.py", "R", "m")])
        .await;
    let id = stored[0].id;

    for status in [
        FindingStatus::Confirmed,
        FindingStatus::Fixed,
        FindingStatus::Reopened,
        FindingStatus::Open,
    ] {
        let updated = update_status(&mut server, id, status as i32, "")
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.status, status as i32);
    }
    let fetched = server
        .analysis
        .get_finding(pb::GetFindingRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.revision, 5);
    assert_eq!(fetched.status_reason, "");
}

async fn update_rejects_invalid_status(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    let stored = server
        .record_findings(run.id, vec![new_finding("a.py", "R", "m")])
        .await;

    let status = expect_error(
        update_status(
            &mut server,
            stored[0].id,
            FindingStatus::Unspecified as i32,
            "why",
        )
        .await,
    );
    assert_status(&status, Code::InvalidArgument, "status: is required");

    let status = expect_error(update_status(&mut server, stored[0].id, 42, "why").await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "status: 42 is not a known value",
    );

    let long_reason = "r".repeat(64 * 1024 + 1);
    let status = expect_error(
        update_status(
            &mut server,
            stored[0].id,
            FindingStatus::Dismissed as i32,
            &long_reason,
        )
        .await,
    );
    assert_status(&status, Code::InvalidArgument, "reason:");
}

async fn update_unknown_id_not_found(mut server: TestServer) {
    let status =
        expect_error(update_status(&mut server, 999, FindingStatus::Confirmed as i32, "").await);
    assert_status(&status, Code::NotFound, "finding 999 not found");

    let status =
        expect_error(update_status(&mut server, 0, FindingStatus::Confirmed as i32, "").await);
    assert_status(&status, Code::InvalidArgument, "id:");
}

backend_tests! {
    record_stores_in_request_order,
    record_unknown_crew_output_not_found,
    record_nonpositive_crew_output_invalid,
    record_empty_batch_invalid,
    record_over_batch_limit_invalid,
    record_batch_at_limit_stored,
    record_bad_field_names_index,
    record_rejects_invalid_fields,
    record_rejects_path_empty_once_normalised,
    record_end_before_start_invalid,
    record_missing_end_line_uses_start,
    record_normalises_paths,
    record_derives_stable_fingerprint,
    record_keeps_client_fingerprint,
    get_unknown_id_not_found,
    list_filters_by_run_path_and_rule,
    list_prefix_matches_wildcards_literally,
    list_filters_by_min_priority,
    list_filters_by_status,
    list_rejects_invalid_filters,
    list_pages_in_record_order,
    list_by_path_pages_group_files,
    list_paging_stable_under_inserts,
    later_pages_repeat_first_total,
    list_token_with_other_filters_invalid,
    update_dismissed_requires_reason,
    update_walks_statuses,
    update_rejects_invalid_status,
    update_unknown_id_not_found,
}
