//! `code-analyzer push-logs FILE`: streams a JSON Lines file to IngestLogs.
//!
//! Each line is an object with `timestamp` (RFC 3339), `level`, `message`,
//! and optionally `crew_name`, `crew_output_id`, `metadata` (an object) and
//! `entry_id`. A line without `entry_id` gets `SOURCE:LINE`, so pushing the
//! same file twice stores each entry once.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use prost_types::Timestamp;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::api::convert::object_to_struct;
use crate::pb::log_service_client::LogServiceClient;
use crate::pb::{IngestLogsRequest, NewLogEntry};

/// Entries per stream message.
const ENTRIES_PER_MESSAGE: usize = 1_000;
/// Problems listed in the summary; the counts include all of them.
const MAX_LISTED_PROBLEMS: usize = 10;

#[derive(Debug, Clone, Args)]
pub struct PushLogsArgs {
    /// JSON Lines file, one log entry per line.
    pub file: PathBuf,

    /// Prefix of the generated entry ids; defaults to the file's name.
    #[arg(long)]
    pub source: Option<String>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Builds an entry from one line, or returns why the line is unusable.
fn parse_line(line: &str, source: &str, line_number: u64) -> Result<NewLogEntry, String> {
    let Value::Object(mut object) =
        serde_json::from_str::<Value>(line).map_err(|error| error.to_string())?
    else {
        return Err("the line is not a JSON object".to_string());
    };
    let mut text = |key: &str| match object.remove(key) {
        Some(Value::String(value)) => Ok(value),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(format!("{key} must be a string, got {other}")),
    };
    let entry_id = text("entry_id")?;
    let timestamp = text("timestamp")?;
    let level = text("level")?;
    let message = text("message")?;
    let crew_name = text("crew_name")?;

    let timestamp = if timestamp.is_empty() {
        None
    } else {
        Some(
            Timestamp::from_str(&timestamp)
                .map_err(|_| format!("timestamp {timestamp:?} is not RFC 3339"))?,
        )
    };
    let crew_output_id = match object.remove("crew_output_id") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_i64()
            .ok_or_else(|| format!("crew_output_id must be an integer, got {value}"))?,
    };
    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(object_to_struct(map)),
        Some(other) => return Err(format!("metadata must be an object, got {other}")),
    };
    Ok(NewLogEntry {
        entry_id: if entry_id.is_empty() {
            format!("{source}:{line_number}")
        } else {
            entry_id
        },
        timestamp,
        level,
        message,
        crew_name,
        crew_output_id,
        metadata,
    })
}

pub async fn run(args: PushLogsArgs) -> Result<(), ClientError> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|error| format!("cannot open {}: {error}", args.file.display()))?;
    let source = args.source.clone().unwrap_or_else(|| {
        args.file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "logs".to_string())
    });
    let channel = connect(&args.client).await?;

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let path = args.file.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut entries = Vec::with_capacity(ENTRIES_PER_MESSAGE);
        let mut problems: Vec<String> = Vec::new();
        let mut skipped = 0u64;
        let mut line_number = 0u64;
        while let Some(line) = lines.next_line().await? {
            line_number += 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line, &source, line_number) {
                Ok(entry) => entries.push(entry),
                Err(reason) => {
                    skipped += 1;
                    if problems.len() < MAX_LISTED_PROBLEMS {
                        problems.push(format!("line {line_number}: {reason}"));
                    }
                }
            }
            if entries.len() == ENTRIES_PER_MESSAGE {
                let message = IngestLogsRequest {
                    entries: std::mem::take(&mut entries),
                };
                if sender.send(message).await.is_err() {
                    break;
                }
            }
        }
        if !entries.is_empty() {
            let _ = sender.send(IngestLogsRequest { entries }).await;
        }
        Ok::<_, std::io::Error>((skipped, problems))
    });

    let mut client = LogServiceClient::new(channel);
    let result = client
        .ingest_logs(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await;
    let (skipped, problems) = reader
        .await?
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let response = result
        .map_err(|status| {
            format!(
                "push of {} failed: {}",
                path.display(),
                describe_status(&status)
            )
        })?
        .into_inner();

    if args.client.json {
        let rejections: Vec<_> = response
            .rejections
            .iter()
            .map(|rejection| {
                serde_json::json!({
                    "position": rejection.position,
                    "entry_id": rejection.entry_id,
                    "field": rejection.field,
                    "reason": rejection.reason,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "accepted_count": response.accepted_count,
            "duplicate_count": response.duplicate_count,
            "rejected_count": response.rejected_count,
            "skipped_line_count": skipped,
            "rejections": rejections,
            "skipped_lines": problems,
        });
        println!("{summary}");
    } else {
        println!(
            "Pushed {}: {} stored, {} duplicates, {} rejected, {} unreadable lines skipped.",
            path.display(),
            response.accepted_count,
            response.duplicate_count,
            response.rejected_count,
            skipped
        );
        for rejection in response.rejections.iter().take(MAX_LISTED_PROBLEMS) {
            println!(
                "  rejected {}: {} {}",
                rejection.entry_id, rejection.field, rejection.reason
            );
        }
        for problem in &problems {
            println!("  skipped {problem}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn line_without_entry_id_gets_source_and_line() {
        let line = r#"{"timestamp": "2005-12-04T04:47:44.000Z", "level": "notice", "message": "ok", "crew_name": "apache", "metadata": {"source_line": 1}}"#;
        let entry = parse_line(line, "apache.jsonl", 7).unwrap();
        assert_eq!(entry.entry_id, "apache.jsonl:7");
        assert_eq!(entry.level, "notice");
        assert_eq!(entry.timestamp.unwrap().seconds, 1_133_671_664);
        assert!(entry.metadata.unwrap().fields.contains_key("source_line"));
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(
            parse_line("[1]", "s", 1)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            parse_line(r#"{"timestamp": "yesterday"}"#, "s", 1)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(
            parse_line(r#"{"level": 5}"#, "s", 1)
                .unwrap_err()
                .contains("level must be a string")
        );
        assert_eq!(
            parse_line(
                r#"{"entry_id": "x", "level": "INFO", "message": "m"}"#,
                "s",
                1
            )
            .unwrap()
            .entry_id,
            "x"
        );
    }
}
