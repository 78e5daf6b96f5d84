//! Conversions between protobuf messages and database rows: times, JSON
//! documents (`google.protobuf.Struct`) and one function per record type.

use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number};

use crate::pb;
use crate::storage::crew_outputs::DeletedCrewOutput;
use crate::storage::history::{HistoryEvent, HistoryRecord};
use crate::storage::models::{CrewOutputRow, FindingRow, FixWithFindings, LogEntryRow, TaskRow};

/// Deepest nesting of objects and lists accepted in a JSON document.
pub const MAX_JSON_DEPTH: usize = 32;

/// Converts a protobuf timestamp to UTC microseconds since the Unix epoch.
pub fn timestamp_to_micros(timestamp: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return None;
    }
    timestamp
        .seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(timestamp.nanos / 1_000))
}

pub fn micros_to_timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Reason a `Struct` cannot be stored as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    TooDeep,
    NotFinite,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::TooDeep => write!(f, "is nested deeper than {MAX_JSON_DEPTH} levels"),
            JsonError::NotFinite => write!(f, "contains a number that is NaN or infinite"),
        }
    }
}

/// Converts a `Struct` to JSON. Whole numbers within 2^53 become JSON
/// integers, so a line number sent as 5 reads back as 5, not 5.0.
pub fn struct_to_json(document: &Struct) -> Result<serde_json::Value, JsonError> {
    struct_to_json_at(document, 1)
}

fn struct_to_json_at(document: &Struct, depth: usize) -> Result<serde_json::Value, JsonError> {
    if depth > MAX_JSON_DEPTH {
        return Err(JsonError::TooDeep);
    }
    let mut object = Map::with_capacity(document.fields.len());
    for (key, value) in &document.fields {
        object.insert(key.clone(), value_to_json(value, depth)?);
    }
    Ok(serde_json::Value::Object(object))
}

fn value_to_json(value: &Value, depth: usize) -> Result<serde_json::Value, JsonError> {
    const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(*flag),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text.clone()),
        Some(Kind::NumberValue(number)) => {
            if !number.is_finite() {
                return Err(JsonError::NotFinite);
            }
            if number.fract() == 0.0 && number.abs() <= MAX_EXACT_INTEGER {
                serde_json::Value::Number(Number::from(*number as i64))
            } else {
                Number::from_f64(*number)
                    .map(serde_json::Value::Number)
                    .ok_or(JsonError::NotFinite)?
            }
        }
        Some(Kind::StructValue(inner)) => struct_to_json_at(inner, depth + 1)?,
        Some(Kind::ListValue(list)) => {
            if depth + 1 > MAX_JSON_DEPTH {
                return Err(JsonError::TooDeep);
            }
            let items: Result<Vec<_>, _> = list
                .values
                .iter()
                .map(|item| value_to_json(item, depth + 1))
                .collect();
            serde_json::Value::Array(items?)
        }
    })
}

/// Converts stored JSON text to a `Struct`. A document that is not an
/// object is wrapped as `{"value": ...}`; text that is not JSON gives an
/// empty `Struct`, since only this server writes these columns.
pub fn json_text_to_struct(text: &str) -> Struct {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => object_to_struct(object),
        Ok(other) => Struct {
            fields: [("value".to_string(), json_to_value(other))].into(),
        },
        Err(_) => Struct::default(),
    }
}

/// Converts a JSON object to a `Struct`.
pub fn object_to_struct(object: Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => Kind::StringValue(text),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(object_to_struct(object)),
    };
    Value { kind: Some(kind) }
}

fn optional_timestamp(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(micros_to_timestamp)
}

pub fn crew_output(row: CrewOutputRow) -> pb::CrewOutput {
    pb::CrewOutput {
        id: row.id,
        crew_name: row.crew_name,
        output_type: row.output_type,
        status: row.status,
        results: Some(json_text_to_struct(&row.results)),
        error_message: row.error_message,
        created_at: Some(micros_to_timestamp(row.created_at)),
        updated_at: Some(micros_to_timestamp(row.updated_at)),
        started_at: optional_timestamp(row.started_at),
        finished_at: optional_timestamp(row.finished_at),
        revision: row.revision,
        keep: row.keep != 0,
    }
}

pub fn deleted_crew_output(deleted: DeletedCrewOutput) -> pb::DeleteCrewOutputResponse {
    pb::DeleteCrewOutputResponse {
        crew_output: Some(crew_output(deleted.crew_output)),
        deleted_finding_count: deleted.findings,
        deleted_fix_count: deleted.fixes,
        deleted_fix_link_count: deleted.fix_links,
        deleted_log_entry_count: deleted.log_entries,
    }
}

pub fn finding(row: FindingRow) -> pb::Finding {
    pb::Finding {
        id: row.id,
        crew_output_id: row.crew_output_id,
        file_path: row.file_path,
        rule_id: row.rule_id,
        message: row.message,
        priority: row.priority,
        status: row.status,
        status_reason: row.status_reason,
        range: Some(pb::TextRange {
            start_line: row.start_line,
            end_line: row.end_line,
            start_column: row.start_column,
            end_column: row.end_column,
        }),
        fingerprint: row.fingerprint,
        fingerprint_version: row.fingerprint_version,
        analysis: Some(json_text_to_struct(&row.analysis)),
        created_at: Some(micros_to_timestamp(row.created_at)),
        updated_at: Some(micros_to_timestamp(row.updated_at)),
        revision: row.revision,
        dismiss_reason: row.dismiss_reason,
    }
}

pub fn fix(stored: FixWithFindings) -> pb::Fix {
    let row = stored.fix;
    pb::Fix {
        id: row.id,
        crew_output_id: row.crew_output_id,
        file_path: row.file_path,
        description: row.description,
        changes: Some(json_text_to_struct(&row.changes)),
        status: row.status,
        finding_ids: stored.finding_ids,
        created_at: Some(micros_to_timestamp(row.created_at)),
        updated_at: Some(micros_to_timestamp(row.updated_at)),
        revision: row.revision,
    }
}

pub fn log_entry(row: LogEntryRow) -> pb::LogEntry {
    pb::LogEntry {
        id: row.id,
        entry_id: row.entry_id.unwrap_or_default(),
        timestamp: Some(micros_to_timestamp(row.timestamp)),
        level: row.level,
        severity_number: row.severity_number,
        message: row.message,
        crew_name: row.crew_name,
        crew_output_id: row.crew_output_id.unwrap_or(0),
        metadata: Some(json_text_to_struct(&row.metadata)),
        created_at: Some(micros_to_timestamp(row.created_at)),
    }
}

pub fn millis_to_duration(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis.div_euclid(1_000),
        nanos: (millis.rem_euclid(1_000) * 1_000_000) as i32,
    }
}

/// Converts a task; the lease token is kept only for the worker that holds
/// the lease (claim and heartbeat responses).
pub fn task(row: TaskRow, with_lease_token: bool) -> pb::Task {
    pb::Task {
        id: row.id,
        queue: row.queue,
        payload: Some(json_text_to_struct(&row.payload)),
        priority: row.priority,
        state: row.state,
        dedupe_key: row.dedupe_key.unwrap_or_default(),
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        run_at: Some(micros_to_timestamp(row.run_at)),
        worker: row.worker,
        lease_token: if with_lease_token {
            row.lease_token
        } else {
            String::new()
        },
        lease_expires_at: optional_timestamp(row.lease_expires_at),
        last_error: row.last_error,
        crew_output_id: row.crew_output_id.unwrap_or(0),
        retry_backoff: Some(millis_to_duration(row.retry_backoff_ms)),
        revision: row.revision,
        created_at: Some(micros_to_timestamp(row.created_at)),
        updated_at: Some(micros_to_timestamp(row.updated_at)),
        finished_at: optional_timestamp(row.finished_at),
        leased_at: optional_timestamp(row.leased_at),
    }
}

pub fn history_event(event: HistoryEvent) -> pb::FileHistoryEvent {
    let record = match event.record {
        HistoryRecord::Finding(row) => pb::file_history_event::Record::Finding(finding(row)),
        HistoryRecord::Fix(stored) => pb::file_history_event::Record::Fix(fix(stored)),
    };
    pb::FileHistoryEvent {
        record: Some(record),
        crew_name: event.crew_output.crew_name,
        crew_output_status: event.crew_output.status,
        crew_output_created_at: Some(micros_to_timestamp(event.crew_output.created_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(value: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(value)),
        }
    }

    #[test]
    fn timestamps_round_trip_in_micros() {
        for micros in [0, 1, -1, 1_733_300_000_123_456, -62_135_596_800_000_000] {
            let timestamp = micros_to_timestamp(micros);
            assert_eq!(timestamp_to_micros(&timestamp), Some(micros));
        }
        let invalid = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(timestamp_to_micros(&invalid), None);
    }

    #[test]
    fn whole_numbers_stay_integers() {
        let document = Struct {
            fields: [
                ("line".to_string(), number(5.0)),
                ("score".to_string(), number(0.5)),
            ]
            .into(),
        };
        let json = struct_to_json(&document).unwrap();
        assert_eq!(json.to_string(), r#"{"line":5,"score":0.5}"#);
    }

    #[test]
    fn deep_documents_are_rejected() {
        let mut document = Struct::default();
        for _ in 0..MAX_JSON_DEPTH {
            document = Struct {
                fields: [(
                    "a".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(document)),
                    },
                )]
                .into(),
            };
        }
        assert_eq!(struct_to_json(&document), Err(JsonError::TooDeep));
        assert_eq!(
            struct_to_json(&Struct {
                fields: [("x".to_string(), number(f64::NAN))].into()
            }),
            Err(JsonError::NotFinite)
        );
    }
}
