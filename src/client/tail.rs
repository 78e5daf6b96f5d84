//! `code-analyzer tail`: prints log entries as the server stores them, one
//! line each, or one JSON object per line with `--json`. With `--since` it
//! prints the stored entries from that time on first. It runs until Ctrl-C
//! or until the server ends the stream.

use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use clap::Args;
use prost_types::Timestamp;

use super::{ClientArgs, ClientError, connect, describe_status};
use crate::api::convert::{struct_to_json, timestamp_to_micros};
use crate::pb::log_service_client::LogServiceClient;
use crate::pb::tail_logs_response::Event;
use crate::pb::{LogEntry, TailLogsRequest};

/// Options of `code-analyzer tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Print only the entries of this crew.
    #[arg(long)]
    pub crew: Option<String>,

    /// Print only the entries of this crew output.
    #[arg(long)]
    pub crew_output_id: Option<i64>,

    /// Print only entries at or above this level, such as warning. Any
    /// level name that push-logs accepts works.
    #[arg(long)]
    pub min_level: Option<String>,

    /// Print only entries whose message contains this text, case-sensitive.
    #[arg(long)]
    pub contains: Option<String>,

    /// Print the stored entries from this time on first: an RFC 3339 time
    /// such as 2026-12-04T10:00:00Z, or a time span before now such as 90s,
    /// 10m, 2h, 1d or 1h30m.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Timestamp>,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses `--since` against the current time.
fn parse_since(text: &str) -> Result<Timestamp, String> {
    since_at(text, SystemTime::now())
}

/// Parses `--since`: an RFC 3339 time, or a span before `now` written as
/// numbers with the units s, m, h and d.
fn since_at(text: &str, now: SystemTime) -> Result<Timestamp, String> {
    if let Ok(time) = Timestamp::from_str(text) {
        return Ok(time);
    }
    let span = parse_span(text).ok_or_else(|| {
        format!("{text:?} is neither an RFC 3339 time nor a time span such as 10m, 2h or 1h30m")
    })?;
    let start = now
        .checked_sub(span)
        .ok_or_else(|| format!("{text:?} reaches back before 1970"))?;
    Ok(Timestamp::from(start))
}

/// Parses a time span such as `90s`, `10m` or `1h30m`.
fn parse_span(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for character in text.trim().chars() {
        if character.is_ascii_digit() {
            digits.push(character);
            continue;
        }
        let unit_seconds: u64 = match character {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return None,
        };
        let count: u64 = digits.parse().ok()?;
        total = total.checked_add(count.checked_mul(unit_seconds)?)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

fn time_text(time: Option<&Timestamp>) -> String {
    time.map(ToString::to_string).unwrap_or_default()
}

/// Formats an entry as one line: time, level, crew and message.
fn entry_line(entry: &LogEntry) -> String {
    let crew = if entry.crew_name.is_empty() {
        "-"
    } else {
        &entry.crew_name
    };
    format!(
        "{}  {:<7}  {}  {}",
        time_text(entry.timestamp.as_ref()),
        entry.level,
        crew,
        entry.message
    )
}

fn entry_json(entry: &LogEntry) -> serde_json::Value {
    let metadata = entry
        .metadata
        .as_ref()
        .and_then(|metadata| struct_to_json(metadata).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    serde_json::json!({
        "id": entry.id,
        "entry_id": entry.entry_id,
        "timestamp": time_text(entry.timestamp.as_ref()),
        "level": entry.level,
        "severity_number": entry.severity_number,
        "message": entry.message,
        "crew_name": entry.crew_name,
        "crew_output_id": entry.crew_output_id,
        "metadata": metadata,
        "created_at": time_text(entry.created_at.as_ref()),
    })
}

/// Writes one line to stdout and returns `false` when stdout is closed, as
/// when the output goes to `head`.
fn print_line(line: &str) -> Result<bool, ClientError> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(format!("cannot write to stdout: {error}").into()),
    }
}

/// Follows the server's TailLogs stream and prints each entry until Ctrl-C
/// or the end of the stream.
pub async fn run(args: TailArgs) -> Result<(), ClientError> {
    if let Some(since) = &args.since
        && timestamp_to_micros(since).is_none()
    {
        return Err(format!("--since {since} is out of range").into());
    }
    let request = TailLogsRequest {
        start_time: args.since,
        end_time: None,
        min_level: args.min_level.clone().unwrap_or_default(),
        crew_name: args.crew.clone().unwrap_or_default(),
        crew_output_id: args.crew_output_id.unwrap_or(0),
        message_contains: args.contains.clone().unwrap_or_default(),
    };
    let mut client = LogServiceClient::new(connect(&args.client).await?);
    let mut stream = client
        .tail_logs(request)
        .await
        .map_err(|status| format!("tail failed: {}", describe_status(&status)))?
        .into_inner();

    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            message = stream.message() => message,
        };
        let event = match message {
            Ok(Some(response)) => response.event,
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(format!("tail stopped: {}", describe_status(&status)).into());
            }
        };
        match event {
            Some(Event::Entry(entry)) => {
                let line = if args.client.json {
                    entry_json(&entry).to_string()
                } else {
                    entry_line(&entry)
                };
                if !print_line(&line)? {
                    return Ok(());
                }
            }
            Some(Event::FellBehind(behind)) => eprintln!(
                "fell behind: the server skipped {} entries that this tail did not read in time",
                behind.missed_entries
            ),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{parse_span, since_at};

    #[test]
    fn span_units_add_up() {
        assert_eq!(parse_span("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_span("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_span("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_span("2d"), Some(Duration::from_secs(172_800)));
    }

    #[test]
    fn span_rejects_other_text() {
        assert_eq!(parse_span("10"), None);
        assert_eq!(parse_span("m"), None);
        assert_eq!(parse_span("0s"), None);
        assert_eq!(parse_span("10 minutes"), None);
        assert_eq!(parse_span("-5m"), None);
    }

    #[test]
    fn since_takes_time_or_span() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(since_at("10m", now).unwrap().seconds, 999_400);
        assert_eq!(
            since_at("2026-12-04T10:00:00Z", SystemTime::now())
                .unwrap()
                .seconds,
            1_796_378_400
        );
        let error = since_at("yesterday", now).unwrap_err();
        assert!(error.contains("neither an RFC 3339 time"), "{error}");
    }
}
