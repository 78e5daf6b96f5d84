//! Checks on client input, each returning INVALID_ARGUMENT that names the
//! field and the limit. Handlers call them before touching the database.

use prost_types::{Struct, Timestamp};
use tonic::Status;

use super::convert::{self, timestamp_to_micros};
use super::invalid_argument;
use crate::paths;

/// Maximum length of a crew name, output type, rule id or entry id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Maximum length of a file path, in bytes.
pub const MAX_PATH_BYTES: usize = 4_096;
/// Maximum length of a message, description or reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Largest JSON document (results, analysis, changes), serialized, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Largest log entry metadata, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Maximum number of findings in one RecordFindings call and of entries in
/// one IngestLogs message.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// Checks a required text field.
pub fn required(field: &str, value: &str, max_bytes: usize) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(invalid_argument(field, "is required"));
    }
    limited(field, value, max_bytes)
}

/// Checks an optional text field against its size limit.
pub fn limited(field: &str, value: &str, max_bytes: usize) -> Result<(), Status> {
    if value.len() > max_bytes {
        return Err(invalid_argument(
            field,
            format!(
                "is {} bytes, more than the limit of {max_bytes}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a required file path and returns it normalised (see
/// `paths::normalize`); a path that names no file once normalised, such as
/// `./`, is invalid.
pub fn path(field: &str, value: &str) -> Result<String, Status> {
    required(field, value, MAX_PATH_BYTES)?;
    let normalized = paths::normalize(value);
    if normalized.is_empty() {
        return Err(invalid_argument(
            field,
            format!("{value:?} names no file once normalised"),
        ));
    }
    Ok(normalized)
}

/// Returns the normalised path of a non-empty path filter.
pub fn filter_path(field: &str, value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    path(field, value).map(Some)
}

/// Returns `Some(value)` for a non-empty filter, after checking its size.
pub fn filter_text(field: &str, value: &str, max_bytes: usize) -> Result<Option<String>, Status> {
    limited(field, value, max_bytes)?;
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// Checks a required record id.
pub fn id(field: &str, value: i64) -> Result<i64, Status> {
    if value <= 0 {
        return Err(invalid_argument(
            field,
            format!("must be a positive id, got {value}"),
        ));
    }
    Ok(value)
}

/// Returns `Some(id)` for a non-zero id filter; negative ids are invalid.
pub fn optional_id(field: &str, value: i64) -> Result<Option<i64>, Status> {
    match value {
        0 => Ok(None),
        _ => id(field, value).map(Some),
    }
}

/// Serializes a JSON document after checking its depth and size; an unset
/// document is `{}`.
pub fn document(field: &str, value: Option<&Struct>, max_bytes: usize) -> Result<String, Status> {
    let Some(value) = value else {
        return Ok("{}".to_string());
    };
    let json = convert::struct_to_json(value)
        .map_err(|error| invalid_argument(field, error.to_string()))?;
    let text = json.to_string();
    if text.len() > max_bytes {
        return Err(invalid_argument(
            field,
            format!(
                "is {} bytes as JSON, more than the limit of {max_bytes}",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// Converts an optional timestamp to microseconds.
pub fn timestamp(field: &str, value: Option<&Timestamp>) -> Result<Option<i64>, Status> {
    value
        .map(|value| {
            timestamp_to_micros(value)
                .ok_or_else(|| invalid_argument(field, "is not a valid timestamp"))
        })
        .transpose()
}

/// Checks that an enum field contains a value the proto defines; `None` for
/// UNSPECIFIED (0).
pub fn enum_value<E: TryFrom<i32>>(field: &str, value: i32) -> Result<Option<E>, Status> {
    if value == 0 {
        return Ok(None);
    }
    E::try_from(value)
        .map(Some)
        .map_err(|_| invalid_argument(field, format!("{value} is not a known value")))
}

/// Checks a repeated field against its item limit.
pub fn batch_len(field: &str, len: usize) -> Result<(), Status> {
    if len == 0 {
        return Err(invalid_argument(field, "must not be empty"));
    }
    if len > MAX_BATCH_ITEMS {
        return Err(invalid_argument(
            field,
            format!("has {len} items, more than the limit of {MAX_BATCH_ITEMS}"),
        ));
    }
    Ok(())
}

/// Converts an optional duration to milliseconds: `default_ms` when unset,
/// otherwise checked against the range.
pub fn duration_ms(
    field: &str,
    value: Option<&prost_types::Duration>,
    default_ms: i64,
    min_ms: i64,
    max_ms: i64,
) -> Result<i64, Status> {
    let Some(value) = value else {
        return Ok(default_ms);
    };
    let millis = value
        .seconds
        .checked_mul(1_000)
        .and_then(|millis| millis.checked_add(i64::from(value.nanos / 1_000_000)))
        .filter(|_| value.nanos >= 0 && value.nanos < 1_000_000_000)
        .ok_or_else(|| invalid_argument(field, "is not a valid duration"))?;
    if !(min_ms..=max_ms).contains(&millis) {
        return Err(invalid_argument(
            field,
            format!("is {millis} ms, outside the range {min_ms} ms to {max_ms} ms"),
        ));
    }
    Ok(millis)
}
