//! AnalysisService.GetFileHistory: the findings and fixes of one file
//! across runs, newest first, paged over both kinds at once.

mod common;

use std::collections::HashSet;

use code_analyzer::pb::file_history_event::Record;
use code_analyzer::pb::{self, CrewOutputStatus};
use common::{
    SMALL_SARIF, SMALL_SARIF_AGENT_PATH, TestServer, assert_status, crewai_options, expect_error,
    fixture, new_finding,
};
use tonic::Code;

const FIXTURE_FILE: &str = "lib/crewai/tests/test_crew.py";

/// Identity of an event: its kind and the id of its record.
fn key(event: &pb::FileHistoryEvent) -> (&'static str, i64) {
    match &event.record {
        Some(Record::Finding(finding)) => ("finding", finding.id),
        Some(Record::Fix(fix)) => ("fix", fix.id),
        None => panic!("event without a record"),
    }
}

fn created_micros(event: &pb::FileHistoryEvent) -> i64 {
    let created_at = match &event.record {
        Some(Record::Finding(finding)) => finding.created_at,
        Some(Record::Fix(fix)) => fix.created_at,
        None => None,
    }
    .expect("record without created_at");
    created_at.seconds * 1_000_000 + i64::from(created_at.nanos / 1_000)
}

/// Pages through the history of `file_path` and returns every event with
/// the last page's counts.
async fn full_history(
    server: &mut TestServer,
    file_path: &str,
    page_size: i32,
) -> (Vec<pb::FileHistoryEvent>, pb::GetFileHistoryResponse) {
    let mut events = Vec::new();
    let mut request = pb::GetFileHistoryRequest {
        file_path: file_path.to_string(),
        page_size,
        page_token: String::new(),
    };
    loop {
        let mut page = server
            .analysis
            .get_file_history(request.clone())
            .await
            .expect("GetFileHistory failed")
            .into_inner();
        events.append(&mut page.events);
        if page.next_page_token.is_empty() {
            return (events, page);
        }
        request.page_token = std::mem::take(&mut page.next_page_token);
    }
}

fn assert_each_once(events: &[pb::FileHistoryEvent]) {
    let keys: Vec<(&str, i64)> = events.iter().map(key).collect();
    let unique: HashSet<(&str, i64)> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "repeated events in {keys:?}");
}

fn assert_newest_first(events: &[pb::FileHistoryEvent]) {
    let times: Vec<i64> = events.iter().map(created_micros).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "not newest first: {times:?}"
    );
}

async fn record_fix(
    server: &mut TestServer,
    crew_output_id: i64,
    file_path: &str,
    finding_ids: Vec<i64>,
) -> pb::Fix {
    server
        .fixes
        .record_fix(pb::RecordFixRequest {
            crew_output_id,
            file_path: file_path.to_string(),
            description: "fix".to_string(),
            finding_ids,
            ..Default::default()
        })
        .await
        .expect("RecordFix failed")
        .into_inner()
}

async fn history_lists_newest_first(mut server: TestServer) {
    let first_run = server.create_crew_output("first").await;
    let first = server
        .record_findings(
            first_run.id,
            vec![
                new_finding("lib/a.py", "B007", "one"),
                new_finding("lib/a.py", "E501", "two"),
            ],
        )
        .await;
    let first_fix = record_fix(&mut server, first_run.id, "lib/a.py", vec![first[0].id]).await;
    server
        .record_findings(
            first_run.id,
            vec![new_finding("lib/other.py", "B007", "elsewhere")],
        )
        .await;
    let second_run = server.create_crew_output("second").await;
    let second = server
        .record_findings(second_run.id, vec![new_finding("lib/a.py", "E501", "two")])
        .await;
    let second_fix = record_fix(&mut server, second_run.id, "lib/a.py", vec![second[0].id]).await;

    let response = server
        .analysis
        .get_file_history(pb::GetFileHistoryRequest {
            file_path: "lib/a.py".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.total_size, 5);
    assert_eq!(response.finding_count, 3);
    assert_eq!(response.fix_count, 2);
    assert_eq!(response.next_page_token, "");
    let keys: Vec<(&str, i64)> = response.events.iter().map(key).collect();
    assert_eq!(
        keys,
        vec![
            ("fix", second_fix.id),
            ("finding", second[0].id),
            ("fix", first_fix.id),
            ("finding", first[1].id),
            ("finding", first[0].id),
        ]
    );
    assert_eq!(response.events[0].crew_name, "second");
    assert_eq!(response.events[4].crew_name, "first");
    assert_eq!(
        response.events[4].crew_output_status,
        CrewOutputStatus::Pending as i32
    );
    assert_eq!(
        response.events[4].crew_output_created_at,
        first_run.created_at
    );
    let Some(Record::Fix(fix)) = &response.events[2].record else {
        panic!("expected a fix");
    };
    assert_eq!(fix.finding_ids, vec![first[0].id]);
}

async fn history_pages_every_event_once(mut server: TestServer) {
    let mut expected = Vec::new();
    for run_index in 0..3 {
        let run = server.create_crew_output(&format!("run{run_index}")).await;
        let findings = server
            .record_findings(
                run.id,
                vec![
                    new_finding("lib/a.py", "R", "one"),
                    new_finding("lib/a.py", "R", "two"),
                ],
            )
            .await;
        expected.extend(findings.iter().map(|finding| ("finding", finding.id)));
        let fix = record_fix(&mut server, run.id, "lib/a.py", vec![findings[1].id]).await;
        expected.push(("fix", fix.id));
    }

    let (all, _) = full_history(&mut server, "lib/a.py", 0).await;
    for page_size in [1, 2, 3, 4] {
        let (events, last) = full_history(&mut server, "lib/a.py", page_size).await;
        assert_eq!(events.len(), 9, "page_size {page_size}");
        assert_each_once(&events);
        let paged: Vec<(&str, i64)> = events.iter().map(key).collect();
        let whole: Vec<(&str, i64)> = all.iter().map(key).collect();
        assert_eq!(paged, whole, "page_size {page_size}");
        assert_eq!(last.total_size, 9);
        assert_eq!(last.finding_count, 6);
        assert_eq!(last.fix_count, 3);
    }
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    let mut sorted_all: Vec<(&str, i64)> = all.iter().map(key).collect();
    sorted_all.sort();
    assert_eq!(sorted_all, sorted_expected);
    assert_newest_first(&all);
}

async fn history_pages_ties_once(mut server: TestServer) {
    // Every record of one import shares its creation time.
    server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), 1 << 20)
        .await
        .unwrap();
    server
        .import_sarif(crewai_options(), SMALL_SARIF.as_bytes(), 1 << 20)
        .await
        .unwrap();

    let (all, last) = full_history(&mut server, SMALL_SARIF_AGENT_PATH, 0).await;
    assert_eq!(last.finding_count, 6);
    assert_eq!(last.fix_count, 2);
    assert_eq!(all.len(), 8);
    assert_newest_first(&all);
    for page_size in [1, 2, 3] {
        let (events, _) = full_history(&mut server, SMALL_SARIF_AGENT_PATH, page_size).await;
        assert_each_once(&events);
        let paged: Vec<(&str, i64)> = events.iter().map(key).collect();
        let whole: Vec<(&str, i64)> = all.iter().map(key).collect();
        assert_eq!(paged, whole, "page_size {page_size}");
    }
}

async fn history_normalises_path(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    server
        .record_findings(run.id, vec![new_finding("lib/a.py", "R", "m")])
        .await;

    let response = server
        .analysis
        .get_file_history(pb::GetFileHistoryRequest {
            file_path: ".\\lib\\a.py".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.total_size, 1);
}

async fn history_of_unknown_file_empty(mut server: TestServer) {
    let response = server
        .analysis
        .get_file_history(pb::GetFileHistoryRequest {
            file_path: "lib/none.py".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.events.len(), 0);
    assert_eq!(response.total_size, 0);
    assert_eq!(response.finding_count, 0);
    assert_eq!(response.fix_count, 0);
    assert_eq!(response.next_page_token, "");
}

async fn history_rejects_invalid_requests(mut server: TestServer) {
    let run = server.create_crew_output("ruff").await;
    server
        .record_findings(
            run.id,
            vec![
                new_finding("lib/a.py", "R", "m"),
                new_finding("lib/a.py", "R", "n"),
            ],
        )
        .await;
    let first = server
        .analysis
        .get_file_history(pb::GetFileHistoryRequest {
            file_path: "lib/a.py".to_string(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let cases = [
        (
            pb::GetFileHistoryRequest {
                file_path: String::new(),
                ..Default::default()
            },
            "file_path: is required",
        ),
        (
            pb::GetFileHistoryRequest {
                file_path: "p".repeat(4097),
                ..Default::default()
            },
            "file_path:",
        ),
        (
            pb::GetFileHistoryRequest {
                file_path: "lib/a.py".to_string(),
                page_size: -1,
                ..Default::default()
            },
            "page_size:",
        ),
        (
            pb::GetFileHistoryRequest {
                file_path: "lib/b.py".to_string(),
                page_size: 1,
                page_token: first.next_page_token,
            },
            "page_token:",
        ),
    ];
    for (request, prefix) in cases {
        let status = expect_error(server.analysis.get_file_history(request).await);
        assert_status(&status, Code::InvalidArgument, prefix);
    }
}

async fn history_rejects_path_empty_once_normalised(mut server: TestServer) {
    // A SARIF result without a location is stored with an empty path.
    let log = r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
        "results": [{"ruleId": "R1", "message": {"text": "no location"}}]}]}"#;
    server
        .import_sarif(crewai_options(), log.as_bytes(), 1 << 20)
        .await
        .unwrap();

    let status = expect_error(
        server
            .analysis
            .get_file_history(pb::GetFileHistoryRequest {
                file_path: "./".to_string(),
                ..Default::default()
            })
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "file_path:");
}

async fn history_across_fixture_runs(mut server: TestServer) {
    let (Some(may), Some(august)) = (
        fixture("sarif/ruff-crewai-2026-05.sarif.gz"),
        fixture("sarif/ruff-crewai-2026-08.sarif.gz"),
    ) else {
        return;
    };
    let may = server
        .import_sarif(crewai_options(), &std::fs::read(may).unwrap(), 1 << 20)
        .await
        .unwrap();
    let august = server
        .import_sarif(crewai_options(), &std::fs::read(august).unwrap(), 1 << 20)
        .await
        .unwrap();

    let (events, last) = full_history(&mut server, FIXTURE_FILE, 100).await;

    assert_eq!(last.finding_count, 984);
    assert_eq!(last.fix_count, 4);
    assert_eq!(last.total_size, 988);
    assert_eq!(events.len(), 988);
    let findings = events
        .iter()
        .filter(|event| matches!(event.record, Some(Record::Finding(_))))
        .count();
    let fixes = events
        .iter()
        .filter(|event| matches!(event.record, Some(Record::Fix(_))))
        .count();
    assert_eq!(findings, 984);
    assert_eq!(fixes, 4);
    assert_each_once(&events);
    assert_newest_first(&events);

    let august_id = august.runs[0].crew_output_id;
    let may_id = may.runs[0].crew_output_id;
    let runs: Vec<i64> = events
        .iter()
        .map(|event| match &event.record {
            Some(Record::Finding(finding)) => finding.crew_output_id,
            Some(Record::Fix(fix)) => fix.crew_output_id,
            None => 0,
        })
        .collect();
    let first_may = runs
        .iter()
        .position(|&id| id == may_id)
        .expect("no event of the first run");
    assert!(
        runs[..first_may].iter().all(|&id| id == august_id),
        "the newer run comes first"
    );
    assert!(
        runs[first_may..].iter().all(|&id| id == may_id),
        "the older run comes last"
    );
    assert!(events.iter().all(|event| event.crew_name == "ruff"));
}

backend_tests! {
    history_lists_newest_first,
    history_pages_every_event_once,
    history_pages_ties_once,
    history_normalises_path,
    history_of_unknown_file_empty,
    history_rejects_invalid_requests,
    history_rejects_path_empty_once_normalised,
    history_across_fixture_runs,
}
