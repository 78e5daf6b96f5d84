//! `code-analyzer compare BASE HEAD`: prints how the findings of two runs
//! match (new, persisting, resolved) and how their JSON results differ.

use clap::{Args, ValueEnum};

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::pb::analysis_service_client::AnalysisServiceClient;
use crate::pb::{
    CompareRunsRequest, CompareRunsResponse, ComparedFinding, FindingChange, JsonDiff, Priority,
};

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Crew output id of the earlier run.
    pub base: i64,

    /// Crew output id of the later run.
    pub head: i64,

    /// Compare only findings whose path starts with this prefix.
    #[arg(long)]
    pub path_prefix: Option<String>,

    /// Compare only findings of this rule id.
    #[arg(long)]
    pub rule: Option<String>,

    /// Compare only findings of this priority or higher.
    #[arg(long, value_enum)]
    pub min_priority: Option<MinPriority>,

    /// Also list the findings: new, then persisting, then resolved.
    #[arg(long)]
    pub list: bool,

    /// With --list, list only findings of this kind. The counts always
    /// cover all three.
    #[arg(long, value_enum, requires = "list")]
    pub change: Option<Change>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Priorities a comparison can start from.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MinPriority {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl From<MinPriority> for Priority {
    fn from(priority: MinPriority) -> Priority {
        match priority {
            MinPriority::Info => Priority::Info,
            MinPriority::Low => Priority::Low,
            MinPriority::Medium => Priority::Medium,
            MinPriority::High => Priority::High,
            MinPriority::Critical => Priority::Critical,
        }
    }
}

/// Kinds of compared findings.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Change {
    New,
    Persisting,
    Resolved,
}

impl From<Change> for FindingChange {
    fn from(change: Change) -> FindingChange {
        match change {
            Change::New => FindingChange::New,
            Change::Persisting => FindingChange::Persisting,
            Change::Resolved => FindingChange::Resolved,
        }
    }
}

fn change_name(change: i32) -> &'static str {
    FindingChange::try_from(change)
        .map(|change| change.as_str_name())
        .unwrap_or("?")
        .trim_start_matches("FINDING_CHANGE_")
}

fn finding_json(compared: &ComparedFinding) -> serde_json::Value {
    let finding = compared.finding.clone().unwrap_or_default();
    serde_json::json!({
        "change": change_name(compared.change),
        "id": finding.id,
        "base_finding_id": compared.base_finding_id,
        "crew_output_id": finding.crew_output_id,
        "file_path": finding.file_path,
        "start_line": finding.range.map(|range| range.start_line).unwrap_or(0),
        "rule_id": finding.rule_id,
        "message": finding.message,
        "priority": Priority::try_from(finding.priority).map(|p| p.as_str_name()).unwrap_or("?"),
        "fingerprint": finding.fingerprint,
    })
}

fn finding_line(compared: &ComparedFinding) -> String {
    let finding = compared.finding.clone().unwrap_or_default();
    format!(
        "{:<10}  finding {}  {}:{}  {}  {}",
        change_name(compared.change),
        finding.id,
        finding.file_path,
        finding.range.map(|range| range.start_line).unwrap_or(0),
        finding.rule_id,
        finding.message,
    )
}

/// Calls CompareRuns page by page; lists findings only when `list` is set.
async fn compare_all(
    args: &CompareArgs,
) -> Result<(CompareRunsResponse, Vec<ComparedFinding>), ClientError> {
    let mut client = AnalysisServiceClient::new(connect(&args.client).await?);
    let mut findings = Vec::new();
    let mut page_token = String::new();
    loop {
        let response = client
            .compare_runs(CompareRunsRequest {
                base_crew_output_id: args.base,
                head_crew_output_id: args.head,
                file_path_prefix: args.path_prefix.clone().unwrap_or_default(),
                rule_id: args.rule.clone().unwrap_or_default(),
                min_priority: args.min_priority.map_or(0, |p| Priority::from(p) as i32),
                change: args.change.map_or(0, |c| FindingChange::from(c) as i32),
                page_size: if args.list { 1_000 } else { 1 },
                page_token,
            })
            .await
            .map_err(|status| {
                format!(
                    "comparison of runs {} and {} failed: {}",
                    args.base,
                    args.head,
                    describe_status(&status)
                )
            })?
            .into_inner();
        if !args.list {
            return Ok((response, findings));
        }
        findings.extend(response.findings.iter().cloned());
        if response.next_page_token.is_empty() {
            return Ok((response, findings));
        }
        page_token = response.next_page_token;
    }
}

fn print_diff(diff: &JsonDiff) {
    println!(
        "Results diff: {} added, {} removed, {} changed",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len()
    );
    for (sign, paths) in [
        ("+", &diff.added),
        ("-", &diff.removed),
        ("~", &diff.changed),
    ] {
        for path in paths {
            println!("  {sign} {path}");
        }
    }
}

pub async fn run(args: CompareArgs) -> Result<(), ClientError> {
    let (response, findings) = compare_all(&args).await?;
    let diff = response.results_diff.clone().unwrap_or_default();

    if args.client.json {
        let mut summary = serde_json::json!({
            "base_crew_output_id": args.base,
            "head_crew_output_id": args.head,
            "new_count": response.new_count,
            "persisting_count": response.persisting_count,
            "resolved_count": response.resolved_count,
            "results_diff": {
                "added": diff.added,
                "removed": diff.removed,
                "changed": diff.changed,
            },
        });
        if args.list {
            summary["findings"] = findings.iter().map(finding_json).collect();
        }
        println!("{summary}");
    } else {
        println!(
            "Run {} against run {}: {} new, {} persisting, {} resolved findings.",
            args.head,
            args.base,
            response.new_count,
            response.persisting_count,
            response.resolved_count
        );
        print_diff(&diff);
        for compared in &findings {
            println!("  {}", finding_line(compared));
        }
    }
    Ok(())
}
