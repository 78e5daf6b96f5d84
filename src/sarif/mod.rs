//! SARIF 2.1.0 import: decompresses a log, reads each run's results and
//! maps them to findings and fixes. Each result is kept byte for byte as the
//! finding's analysis JSON; only the fields below are interpreted.

use std::collections::HashMap;
use std::io::Read;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::fingerprint;
use crate::paths;
use crate::pb::Priority;

pub mod export;
pub mod pull_request;

/// Reason a SARIF log cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum SarifError {
    #[error("the log is larger than the limit of {0} bytes once decompressed")]
    TooLarge(usize),
    #[error("the gzip stream is invalid: {0}")]
    Gzip(std::io::Error),
    #[error("the log is not valid SARIF JSON: {0}")]
    Json(serde_json::Error),
    #[error("SARIF version {0:?} is not supported; only 2.1.0 is")]
    Version(String),
    #[error("run {run}, result {result}: {reason}")]
    Result {
        run: usize,
        result: usize,
        reason: String,
    },
}

/// Returns the log as plain bytes, decompressing it if it starts with the
/// gzip magic number. Fails when the plain log exceeds `max_bytes`.
pub fn decompress(bytes: Vec<u8>, max_bytes: usize) -> Result<Vec<u8>, SarifError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        if bytes.len() > max_bytes {
            return Err(SarifError::TooLarge(max_bytes));
        }
        return Ok(bytes);
    }
    let mut plain = Vec::with_capacity(bytes.len().saturating_mul(8).min(max_bytes));
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(SarifError::Gzip)?;
    if plain.len() > max_bytes {
        return Err(SarifError::TooLarge(max_bytes));
    }
    Ok(plain)
}

/// Settings of one import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Root that absolute artifact paths are made relative to.
    pub source_root: Option<String>,
}

/// One SARIF run, ready to store as a crew output with its findings.
#[derive(Debug, Clone)]
pub struct ParsedRun {
    pub tool_name: String,
    /// JSON object stored as the crew output's results: the tool's driver
    /// without its rules, the number of rules, and the run's properties.
    pub summary: String,
    pub findings: Vec<ParsedFinding>,
}

#[derive(Debug, Clone)]
pub struct ParsedFinding {
    pub file_path: String,
    pub rule_id: String,
    pub message: String,
    pub priority: Priority,
    pub start_line: i32,
    pub end_line: i32,
    pub start_column: i32,
    pub end_column: i32,
    pub fingerprint: String,
    pub fingerprint_version: i32,
    /// The whole SARIF result.
    pub analysis: String,
    pub fixes: Vec<ParsedFix>,
}

#[derive(Debug, Clone)]
pub struct ParsedFix {
    pub file_path: String,
    pub description: String,
    /// The whole SARIF fix, without `OTHER_RESULTS_PROPERTY`.
    pub changes: String,
    /// Positions in the run's results of other results the fix addresses,
    /// from `OTHER_RESULTS_PROPERTY`.
    pub other_results: Vec<usize>,
}

#[derive(Deserialize)]
struct Log<'a> {
    version: String,
    #[serde(borrow, default)]
    runs: Vec<Run<'a>>,
}

#[derive(Deserialize)]
struct Run<'a> {
    #[serde(borrow)]
    tool: Tool<'a>,
    #[serde(borrow, default)]
    results: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    driver: Driver<'a>,
}

#[derive(Deserialize)]
struct Driver<'a> {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default, rename = "semanticVersion")]
    semantic_version: Option<String>,
    #[serde(default, rename = "informationUri")]
    information_uri: Option<String>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    properties: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Rule {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "defaultConfiguration")]
    default_configuration: Option<Configuration>,
    #[serde(default, rename = "shortDescription")]
    short_description: Option<Message>,
    #[serde(default)]
    properties: Option<RuleProperties>,
}

#[derive(Deserialize, Default)]
struct Configuration {
    #[serde(default)]
    level: Option<String>,
}

#[derive(Deserialize, Default)]
struct RuleProperties {
    /// GitHub code scanning's CVSS-like score, "0.0" to "10.0".
    #[serde(default, rename = "security-severity")]
    security_severity: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct Message {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ResultFields<'a> {
    #[serde(default, rename = "ruleId")]
    rule_id: Option<String>,
    #[serde(default, rename = "ruleIndex")]
    rule_index: Option<usize>,
    #[serde(default)]
    rule: Option<RuleReference>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: Message,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    fingerprints: Option<HashMap<String, String>>,
    #[serde(default, rename = "partialFingerprints")]
    partial_fingerprints: Option<HashMap<String, String>>,
    #[serde(borrow, default)]
    fixes: Vec<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RuleReference {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize, Default)]
struct Location {
    #[serde(default, rename = "physicalLocation")]
    physical_location: Option<PhysicalLocation>,
}

#[derive(Deserialize, Default)]
struct PhysicalLocation {
    #[serde(default, rename = "artifactLocation")]
    artifact_location: Option<ArtifactLocation>,
    #[serde(default)]
    region: Option<Region>,
}

#[derive(Deserialize, Default)]
struct ArtifactLocation {
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize, Default)]
struct Region {
    #[serde(default, rename = "startLine")]
    start_line: Option<i64>,
    #[serde(default, rename = "endLine")]
    end_line: Option<i64>,
    #[serde(default, rename = "startColumn")]
    start_column: Option<i64>,
    #[serde(default, rename = "endColumn")]
    end_column: Option<i64>,
}

#[derive(Deserialize)]
struct FixFields {
    #[serde(default)]
    description: Message,
    #[serde(default, rename = "artifactChanges")]
    artifact_changes: Vec<ArtifactChange>,
    #[serde(default)]
    properties: Option<Value>,
}

#[derive(Deserialize)]
struct ArtifactChange {
    #[serde(default, rename = "artifactLocation")]
    artifact_location: Option<ArtifactLocation>,
}

/// Maps a SARIF level to a priority: error is HIGH, warning MEDIUM, note
/// LOW and none INFO; SARIF's default level is warning.
fn level_priority(level: Option<&str>) -> Priority {
    match level.unwrap_or("warning") {
        "error" => Priority::High,
        "note" => Priority::Low,
        "none" => Priority::Info,
        _ => Priority::Medium,
    }
}

/// Maps GitHub code scanning's `security-severity` score to a priority with
/// its thresholds: 9.0 critical, 7.0 high, 4.0 medium, above 0 low.
fn security_priority(score: &serde_json::Value) -> Option<Priority> {
    let score = match score {
        serde_json::Value::Number(number) => number.as_f64()?,
        serde_json::Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    Some(match score {
        s if s >= 9.0 => Priority::Critical,
        s if s >= 7.0 => Priority::High,
        s if s >= 4.0 => Priority::Medium,
        s if s > 0.0 => Priority::Low,
        _ => Priority::Info,
    })
}

fn clamp_position(value: Option<i64>) -> i32 {
    value.unwrap_or(0).clamp(0, i64::from(i32::MAX)) as i32
}

/// Key in a fix's `properties` under which an export of this server lists
/// the positions in the run's `results` of the results the fix addresses
/// besides the one it sits under.
pub const OTHER_RESULTS_PROPERTY: &str = "codeAnalyzer/otherResults";

/// Reads `OTHER_RESULTS_PROPERTY` of a fix and returns the positions with
/// the fix's JSON without that key (the original text when it is absent).
/// Values that are not positions are ignored.
fn other_results(properties: Option<&Value>, raw_fix: &str) -> (Vec<usize>, String) {
    let Some(listed) = properties.and_then(|properties| properties.get(OTHER_RESULTS_PROPERTY))
    else {
        return (Vec::new(), raw_fix.to_string());
    };
    let positions = listed
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_u64)
                .filter_map(|position| usize::try_from(position).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut fix: Value = serde_json::from_str(raw_fix).unwrap_or_default();
    if let Some(properties) = fix.get_mut("properties").and_then(Value::as_object_mut) {
        properties.remove(OTHER_RESULTS_PROPERTY);
        if properties.is_empty() {
            fix.as_object_mut()
                .expect("a fix with properties is an object")
                .remove("properties");
        }
    }
    (positions, fix.to_string())
}

/// Start of the `partialFingerprints` keys under which an export of this
/// server keeps a stored fingerprint; the fingerprint version follows, as
/// in `codeAnalyzer/v1`.
pub const OWN_FINGERPRINT_PREFIX: &str = "codeAnalyzer/v";

/// Reads a fingerprint that an export of this server wrote, with its version.
fn own_fingerprint(fields: &ResultFields<'_>) -> Option<(String, i32)> {
    fields
        .partial_fingerprints
        .as_ref()?
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .filter_map(|(key, value)| {
            let version = key.strip_prefix(OWN_FINGERPRINT_PREFIX)?.parse().ok()?;
            [fingerprint::EXTERNAL_VERSION, fingerprint::DERIVED_VERSION]
                .contains(&version)
                .then(|| (value.clone(), version))
        })
        .max_by_key(|(_, version)| *version)
}

/// Picks the analyzer's own fingerprint, preferring full fingerprints over
/// partial ones and, within each, the smallest key, so the choice is stable.
/// Keys that start with `OWN_FINGERPRINT_PREFIX` are not the analyzer's.
pub fn analyzer_fingerprint(
    fingerprints: Option<&HashMap<String, String>>,
    partial_fingerprints: Option<&HashMap<String, String>>,
) -> Option<String> {
    [fingerprints, partial_fingerprints]
        .into_iter()
        .flatten()
        .find_map(|map| {
            map.iter()
                .filter(|(key, value)| {
                    !value.is_empty() && !key.starts_with(OWN_FINGERPRINT_PREFIX)
                })
                .min_by(|a, b| a.0.cmp(b.0))
                .map(|(key, value)| format!("{key}:{value}"))
        })
}

/// Parses a plain (decompressed) SARIF 2.1.0 log.
pub fn parse(bytes: &[u8], options: &ImportOptions) -> Result<Vec<ParsedRun>, SarifError> {
    let log: Log<'_> = serde_json::from_slice(bytes).map_err(SarifError::Json)?;
    if log.version != "2.1.0" {
        return Err(SarifError::Version(log.version));
    }
    log.runs
        .iter()
        .enumerate()
        .map(|(index, run)| parse_run(index, run, options))
        .collect()
}

fn parse_run(
    run_index: usize,
    run: &Run<'_>,
    options: &ImportOptions,
) -> Result<ParsedRun, SarifError> {
    let driver = &run.tool.driver;
    let rule_positions: HashMap<&str, usize> = driver
        .rules
        .iter()
        .enumerate()
        .map(|(position, rule)| (rule.id.as_str(), position))
        .collect();
    let root = options.source_root.as_deref();

    let mut findings = Vec::with_capacity(run.results.len());
    for (result_index, raw) in run.results.iter().enumerate() {
        let finding = parse_result(raw, driver, &rule_positions, root).map_err(|reason| {
            SarifError::Result {
                run: run_index,
                result: result_index,
                reason,
            }
        })?;
        findings.push(finding);
    }

    let summary = serde_json::json!({
        "tool": {
            "name": driver.name,
            "version": driver.version.as_ref().or(driver.semantic_version.as_ref()),
            "informationUri": driver.information_uri,
        },
        "rule_count": driver.rules.len(),
        "result_count": findings.len(),
        "source_root": root,
        "properties": run.properties.map(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or_default()),
    });
    Ok(ParsedRun {
        tool_name: driver.name.clone(),
        summary: summary.to_string(),
        findings,
    })
}

/// Maps one result. The error names the part of it that is invalid.
fn parse_result(
    raw: &RawValue,
    driver: &Driver<'_>,
    rule_positions: &HashMap<&str, usize>,
    root: Option<&str>,
) -> Result<ParsedFinding, String> {
    let fields: ResultFields<'_> =
        serde_json::from_str(raw.get()).map_err(|error| format!("invalid result: {error}"))?;
    let rule_id = fields
        .rule_id
        .clone()
        .or_else(|| fields.rule.as_ref().and_then(|rule| rule.id.clone()))
        .unwrap_or_default();
    let rule_index = fields
        .rule_index
        .or_else(|| fields.rule.as_ref().and_then(|rule| rule.index))
        .or_else(|| rule_positions.get(rule_id.as_str()).copied());
    let rule = rule_index.and_then(|index| driver.rules.get(index));

    let level = fields.level.as_deref().or_else(|| {
        rule.and_then(|rule| rule.default_configuration.as_ref())
            .and_then(|configuration| configuration.level.as_deref())
    });
    let priority = rule
        .and_then(|rule| rule.properties.as_ref())
        .and_then(|properties| properties.security_severity.as_ref())
        .and_then(security_priority)
        .unwrap_or_else(|| level_priority(level));

    let message = fields
        .message
        .text
        .clone()
        .or_else(|| rule.and_then(|rule| rule.short_description.as_ref()?.text.clone()))
        .unwrap_or_default();

    let physical = fields
        .locations
        .first()
        .and_then(|location| location.physical_location.as_ref());
    let file_path = physical
        .and_then(|location| location.artifact_location.as_ref()?.uri.as_deref())
        .map(|uri| paths::relative_to(uri, root))
        .unwrap_or_default();
    let region = physical.and_then(|location| location.region.as_ref());
    let start_line = clamp_position(region.and_then(|region| region.start_line));
    let end_line = region
        .and_then(|region| region.end_line)
        .map(|line| clamp_position(Some(line)))
        .unwrap_or(start_line);

    let external = analyzer_fingerprint(
        fields.fingerprints.as_ref(),
        fields.partial_fingerprints.as_ref(),
    );
    let (fingerprint, fingerprint_version) = match (own_fingerprint(&fields), external) {
        (Some(own), _) => own,
        (None, Some(external)) => (external, fingerprint::EXTERNAL_VERSION),
        (None, None) => (
            fingerprint::derive(&rule_id, &file_path, &message),
            fingerprint::DERIVED_VERSION,
        ),
    };

    let fixes = fields
        .fixes
        .iter()
        .map(|raw_fix| {
            let fix: FixFields = serde_json::from_str(raw_fix.get())
                .map_err(|error| format!("invalid fix: {error}"))?;
            let fix_path = fix
                .artifact_changes
                .iter()
                .find_map(|change| change.artifact_location.as_ref()?.uri.as_deref())
                .map(|uri| paths::relative_to(uri, root))
                .unwrap_or_else(|| file_path.clone());
            let (other_results, changes) = other_results(fix.properties.as_ref(), raw_fix.get());
            Ok(ParsedFix {
                file_path: fix_path,
                description: fix.description.text.unwrap_or_default(),
                changes,
                other_results,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;

    Ok(ParsedFinding {
        file_path,
        rule_id,
        message,
        priority,
        start_line,
        end_line,
        start_column: clamp_position(region.and_then(|region| region.start_column)),
        end_column: clamp_position(region.and_then(|region| region.end_column)),
        fingerprint,
        fingerprint_version,
        analysis: raw.get().to_string(),
        fixes,
    })
}

#[cfg(test)]
mod tests;
