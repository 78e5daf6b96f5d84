//! `code-analyzer history PATH`: prints the findings and fixes of one file
//! across all runs, newest first.

use clap::Args;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::pb::analysis_service_client::AnalysisServiceClient;
use crate::pb::file_history_event::Record;
use crate::pb::{FileHistoryEvent, FindingStatus, FixStatus, GetFileHistoryRequest, Priority};

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// File path relative to the source root, as stored on findings.
    pub path: String,

    /// Maximum number of events to print; 0 prints them all.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,

    #[command(flatten)]
    pub client: ClientArgs,
}

fn time_text(event: &FileHistoryEvent) -> String {
    event
        .crew_output_created_at
        .map(|time| time.to_string())
        .unwrap_or_default()
}

fn event_line(event: &FileHistoryEvent) -> String {
    match &event.record {
        Some(Record::Finding(finding)) => format!(
            "{}  finding {}  {}  {}  line {}  {}  {}  ({} run {})",
            time_text(event),
            finding.id,
            Priority::try_from(finding.priority)
                .map(|p| p.as_str_name())
                .unwrap_or("?"),
            FindingStatus::try_from(finding.status)
                .map(|s| s.as_str_name())
                .unwrap_or("?"),
            finding.range.map(|range| range.start_line).unwrap_or(0),
            finding.rule_id,
            finding.message,
            event.crew_name,
            finding.crew_output_id,
        ),
        Some(Record::Fix(fix)) => format!(
            "{}  fix {}  {}  {}  addresses {:?}  ({} run {})",
            time_text(event),
            fix.id,
            FixStatus::try_from(fix.status)
                .map(|s| s.as_str_name())
                .unwrap_or("?"),
            fix.description,
            fix.finding_ids,
            event.crew_name,
            fix.crew_output_id,
        ),
        None => String::new(),
    }
}

fn event_json(event: &FileHistoryEvent) -> serde_json::Value {
    let time = time_text(event);
    match &event.record {
        Some(Record::Finding(finding)) => serde_json::json!({
            "kind": "finding",
            "id": finding.id,
            "crew_output_id": finding.crew_output_id,
            "crew_name": event.crew_name,
            "run_created_at": time,
            "rule_id": finding.rule_id,
            "message": finding.message,
            "priority": Priority::try_from(finding.priority).map(|p| p.as_str_name()).unwrap_or("?"),
            "status": FindingStatus::try_from(finding.status).map(|s| s.as_str_name()).unwrap_or("?"),
            "start_line": finding.range.map(|range| range.start_line).unwrap_or(0),
            "end_line": finding.range.map(|range| range.end_line).unwrap_or(0),
            "fingerprint": finding.fingerprint,
        }),
        Some(Record::Fix(fix)) => serde_json::json!({
            "kind": "fix",
            "id": fix.id,
            "crew_output_id": fix.crew_output_id,
            "crew_name": event.crew_name,
            "run_created_at": time,
            "description": fix.description,
            "status": FixStatus::try_from(fix.status).map(|s| s.as_str_name()).unwrap_or("?"),
            "finding_ids": fix.finding_ids,
        }),
        None => serde_json::Value::Null,
    }
}

pub async fn run(args: HistoryArgs) -> Result<(), ClientError> {
    let mut client = AnalysisServiceClient::new(connect(&args.client).await?);
    let mut events = Vec::new();
    let mut page_token = String::new();
    let (finding_count, fix_count) = loop {
        let response = client
            .get_file_history(GetFileHistoryRequest {
                file_path: args.path.clone(),
                page_size: 1_000,
                page_token,
            })
            .await
            .map_err(|status| {
                format!(
                    "history of {} failed: {}",
                    args.path,
                    describe_status(&status)
                )
            })?
            .into_inner();
        events.extend(response.events);
        let done =
            response.next_page_token.is_empty() || (args.limit > 0 && events.len() >= args.limit);
        if done {
            break (response.finding_count, response.fix_count);
        }
        page_token = response.next_page_token;
    };
    if args.limit > 0 {
        events.truncate(args.limit);
    }

    if args.client.json {
        let summary = serde_json::json!({
            "file_path": args.path,
            "finding_count": finding_count,
            "fix_count": fix_count,
            "events": events.iter().map(event_json).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        println!(
            "{}: {finding_count} findings and {fix_count} fixes, newest first",
            args.path
        );
        for event in &events {
            println!("  {}", event_line(event));
        }
        let total = (finding_count + fix_count) as usize;
        if events.len() < total {
            println!(
                "  ... {} more (use --limit 0 to print all)",
                total - events.len()
            );
        }
    }
    Ok(())
}
