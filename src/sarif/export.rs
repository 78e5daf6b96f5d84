//! SARIF 2.1.0 export of one run. The log is written page by page: a head
//! with the tool and its rules, one result per finding, and a tail, so no
//! step keeps the whole log in memory as one JSON value.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{OTHER_RESULTS_PROPERTY, OWN_FINGERPRINT_PREFIX, analyzer_fingerprint};
use crate::paths;
use crate::pb::Priority;
use crate::storage::models::{CrewOutputRow, FindingRow};
use crate::storage::reports::{ExportPage, ExportStart, ExportedFix};

/// JSON schema of SARIF 2.1.0, as `$schema` of the log.
pub const SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// URI base that exported artifact locations are relative to.
pub const SOURCE_ROOT_BASE: &str = "%SRCROOT%";

/// Closes the results, the run, the runs and the log.
pub const LOG_END: &[u8] = b"]}]}";

/// Settings shared by the results of one export: the rule positions and
/// the source root of an imported run.
#[derive(Debug, Clone)]
pub struct SarifExport {
    rule_positions: HashMap<String, usize>,
    source_root: Option<String>,
}

/// Returns the `artifactLocation` of a stored path: relative to
/// `%SRCROOT%`, or a `file://` URI for an absolute path.
pub fn artifact_location(path: &str) -> Value {
    if path.starts_with('/') {
        json!({ "uri": format!("file://{}", paths::percent_encode(path)) })
    } else {
        json!({ "uri": paths::percent_encode(path), "uriBaseId": SOURCE_ROOT_BASE })
    }
}

/// Returns the stored path of the `index`th artifact change of a SARIF fix
/// stored with path `fix_path`. The import stores the path of the first
/// change only, so later changes are made relative to the run's source
/// root the way the import does it.
pub fn change_path(
    fix_path: &str,
    index: usize,
    change: &Value,
    source_root: Option<&str>,
) -> String {
    if index == 0 {
        return fix_path.to_string();
    }
    match change["artifactLocation"]["uri"].as_str() {
        Some(uri) => paths::relative_to(uri, source_root),
        None => fix_path.to_string(),
    }
}

/// Returns the source root that an import recorded in a run's results.
pub fn source_root(results: &Value) -> Option<String> {
    results["source_root"]
        .as_str()
        .filter(|root| !root.is_empty())
        .map(str::to_string)
}

/// Maps a priority to a SARIF level; the inverse of the import's mapping
/// except that CRITICAL, like HIGH, becomes "error".
fn priority_level(priority: i32) -> &'static str {
    match Priority::try_from(priority).unwrap_or(Priority::Medium) {
        Priority::Critical | Priority::High => "error",
        Priority::Low => "note",
        Priority::Info => "none",
        Priority::Medium | Priority::Unspecified => "warning",
    }
}

/// Returns the `originalUriBaseIds` entry of `%SRCROOT%` for a source root
/// given as an absolute path or a `file://` URI.
fn source_root_uri(root: &str) -> Option<String> {
    let mut uri = if root.starts_with("file://") {
        root.to_string()
    } else if root.starts_with('/') {
        format!("file://{}", paths::percent_encode(&paths::normalize(root)))
    } else {
        return None;
    };
    if !uri.ends_with('/') {
        uri.push('/');
    }
    Some(uri)
}

/// Builds the SARIF `tool`: the driver of an imported run, or one named
/// after the crew.
fn tool(crew_output: &CrewOutputRow, results: &Value, rule_ids: &[String]) -> Value {
    let imported = &results["tool"];
    let mut driver = Map::new();
    match imported["name"].as_str() {
        Some(name) => {
            driver.insert("name".into(), json!(name));
            for key in ["version", "informationUri"] {
                if let Some(value) = imported[key].as_str() {
                    driver.insert(key.into(), json!(value));
                }
            }
        }
        None => {
            driver.insert("name".into(), json!(crew_output.crew_name));
        }
    }
    let rules: Vec<Value> = rule_ids.iter().map(|id| json!({ "id": id })).collect();
    driver.insert("rules".into(), Value::Array(rules));
    json!({ "driver": driver })
}

impl SarifExport {
    /// Prepares an export and returns it with the head of the log, up to
    /// the opening bracket of the results.
    pub fn start(start: &ExportStart) -> (SarifExport, Vec<u8>) {
        let results: Value = serde_json::from_str(&start.crew_output.results).unwrap_or_default();
        let source_root = source_root(&results);

        let mut run = Map::new();
        run.insert(
            "tool".into(),
            tool(&start.crew_output, &results, &start.rule_ids),
        );
        if let Some(uri) = source_root.as_deref().and_then(source_root_uri) {
            run.insert(
                "originalUriBaseIds".into(),
                json!({ SOURCE_ROOT_BASE: { "uri": uri } }),
            );
        }
        if results["properties"].is_object() {
            run.insert("properties".into(), results["properties"].clone());
        }
        let run_text = Value::Object(run).to_string();

        let mut head = format!(
            r#"{{"version":"2.1.0","$schema":{},"runs":["#,
            json!(SCHEMA_URI)
        );
        // Reopen the run object to append its results.
        head.push_str(&run_text[..run_text.len() - 1]);
        head.push_str(r#","results":["#);

        let export = SarifExport {
            rule_positions: start
                .rule_ids
                .iter()
                .enumerate()
                .map(|(position, id)| (id.clone(), position))
                .collect(),
            source_root,
        };
        (export, head.into_bytes())
    }

    /// Serializes the results of one page, each preceded by a comma unless
    /// it is the first result of the log.
    pub fn write_page(&self, page: &ExportPage, first_of_log: bool) -> Vec<u8> {
        let mut fixes_by_finding: HashMap<i64, Vec<&ExportedFix>> = HashMap::new();
        for fix in &page.fixes {
            fixes_by_finding
                .entry(fix.finding_id)
                .or_default()
                .push(fix);
        }
        let mut out = Vec::new();
        for (index, finding) in page.findings.iter().enumerate() {
            if index > 0 || !first_of_log {
                out.push(b',');
            }
            let fixes = fixes_by_finding.remove(&finding.id).unwrap_or_default();
            let result = self.result(finding, &fixes);
            serde_json::to_writer(&mut out, &result).expect("writing JSON to memory cannot fail");
        }
        out
    }

    /// Builds the SARIF result of one finding.
    fn result(&self, finding: &FindingRow, fixes: &[&ExportedFix]) -> Value {
        let analysis: Value = serde_json::from_str(&finding.analysis).unwrap_or_default();
        let mut result = match analysis {
            Value::Object(object) if object.get("message").is_some_and(Value::is_object) => object,
            other => built_result(finding, other),
        };

        if !result.get("level").is_some_and(Value::is_string) {
            result.insert("level".into(), json!(priority_level(finding.priority)));
        }
        let message = result["message"]
            .as_object_mut()
            .expect("message is an object");
        if !message.get("text").is_some_and(Value::is_string) {
            message.insert("text".into(), json!(finding.message));
        }
        if !result.contains_key("ruleId") && !finding.rule_id.is_empty() {
            result.insert("ruleId".into(), json!(finding.rule_id));
        }
        self.set_rule_index(&mut result, &finding.rule_id);
        set_location(&mut result, finding);
        self.set_fixes(&mut result, fixes);
        set_fingerprint(&mut result, finding);
        Value::Object(result)
    }

    /// Points `ruleIndex` and `rule.index` at this log's rules, or removes
    /// them when the rule is not listed.
    fn set_rule_index(&self, result: &mut Map<String, Value>, rule_id: &str) {
        let position = self.rule_positions.get(rule_id).copied();
        match position {
            Some(position) => {
                result.insert("ruleIndex".into(), json!(position));
            }
            None => {
                result.remove("ruleIndex");
            }
        }
        if let Some(rule) = result.get_mut("rule").and_then(Value::as_object_mut) {
            match position {
                Some(position) => rule.insert("index".into(), json!(position)),
                None => rule.remove("index"),
            };
        }
    }

    /// Replaces the result's fixes with the stored SARIF fixes.
    fn set_fixes(&self, result: &mut Map<String, Value>, fixes: &[&ExportedFix]) {
        let exported: Vec<Value> = fixes.iter().filter_map(|fix| self.sarif_fix(fix)).collect();
        if exported.is_empty() {
            result.remove("fixes");
        } else {
            result.insert("fixes".into(), Value::Array(exported));
        }
    }

    /// Returns the stored SARIF fix with its paths rewritten and the other
    /// results it addresses listed, or `None` when the fix has no SARIF
    /// `artifactChanges`.
    fn sarif_fix(&self, exported: &ExportedFix) -> Option<Value> {
        let fix = &exported.fix;
        let mut changes: Value = serde_json::from_str(&fix.changes).ok()?;
        let object = changes.as_object_mut()?;
        let artifact_changes = object.get_mut("artifactChanges")?.as_array_mut()?;
        if artifact_changes.is_empty() {
            return None;
        }
        for (index, change) in artifact_changes.iter_mut().enumerate() {
            let path = change_path(&fix.file_path, index, change, self.source_root.as_deref());
            if let Some(change) = change.as_object_mut() {
                change.insert("artifactLocation".into(), artifact_location(&path));
            }
        }
        // A SARIF message needs a text or id string, but ruff writes
        // `{"text": null}` for fixes without a title.
        let readable = object.get("description").is_some_and(|description| {
            description["text"].is_string() || description["id"].is_string()
        });
        if !readable {
            if fix.description.is_empty() {
                object.remove("description");
            } else {
                object.insert("description".into(), json!({ "text": fix.description }));
            }
        }
        if !exported.other_results.is_empty() {
            let properties = object
                .entry("properties")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(properties) = properties.as_object_mut() {
                properties.insert(OTHER_RESULTS_PROPERTY.into(), json!(exported.other_results));
            }
        }
        Some(changes)
    }
}

/// Builds a result for a finding whose analysis is not a SARIF result; a
/// non-empty analysis goes to `properties.analysis`.
fn built_result(finding: &FindingRow, analysis: Value) -> Map<String, Value> {
    let mut result = Map::new();
    if !finding.rule_id.is_empty() {
        result.insert("ruleId".into(), json!(finding.rule_id));
    }
    result.insert("message".into(), json!({ "text": finding.message }));
    let empty = match &analysis {
        Value::Null => true,
        Value::Object(object) => object.is_empty(),
        _ => false,
    };
    if !empty {
        result.insert("properties".into(), json!({ "analysis": analysis }));
    }
    result
}

/// Returns the SARIF region of the stored range, or `None` when the start
/// line is unknown.
fn region(finding: &FindingRow) -> Option<Value> {
    if finding.start_line <= 0 {
        return None;
    }
    let mut region = Map::new();
    for (key, value) in [
        ("startLine", finding.start_line),
        ("endLine", finding.end_line),
        ("startColumn", finding.start_column),
        ("endColumn", finding.end_column),
    ] {
        if value > 0 {
            region.insert(key.into(), json!(value));
        }
    }
    Some(Value::Object(region))
}

/// Sets the artifact location of the first location to the stored path,
/// adding a location with the stored region when the result has none. A
/// finding without a path keeps its locations as they are.
fn set_location(result: &mut Map<String, Value>, finding: &FindingRow) {
    if finding.file_path.is_empty() {
        return;
    }
    let has_location = result
        .get("locations")
        .and_then(Value::as_array)
        .is_some_and(|locations| locations.first().is_some_and(Value::is_object));
    if !has_location {
        result.insert("locations".into(), json!([{}]));
    }
    let location = result["locations"][0]
        .as_object_mut()
        .expect("checked above");
    if !location
        .get("physicalLocation")
        .is_some_and(Value::is_object)
    {
        location.insert("physicalLocation".into(), json!({}));
    }
    let physical = location["physicalLocation"]
        .as_object_mut()
        .expect("checked above");
    physical.insert(
        "artifactLocation".into(),
        artifact_location(&finding.file_path),
    );
    if !physical.contains_key("region")
        && let Some(region) = region(finding)
    {
        physical.insert("region".into(), region);
    }
}

fn string_map(value: Option<&Value>) -> Option<HashMap<String, String>> {
    value.and_then(|value| serde_json::from_value(value.clone()).ok())
}

/// Sets the fingerprints so that an import gives back the stored one. The
/// analyzer's own fingerprints stay when they produce it. Otherwise the
/// fingerprint goes to `partialFingerprints["codeAnalyzer/vN"]`, where N
/// is its version.
fn set_fingerprint(result: &mut Map<String, Value>, finding: &FindingRow) {
    if let Some(partial) = result
        .get_mut("partialFingerprints")
        .and_then(Value::as_object_mut)
    {
        partial.retain(|key, _| !key.starts_with(OWN_FINGERPRINT_PREFIX));
    }
    let from_analyzer = analyzer_fingerprint(
        string_map(result.get("fingerprints")).as_ref(),
        string_map(result.get("partialFingerprints")).as_ref(),
    );
    if finding.fingerprint_version == crate::fingerprint::EXTERNAL_VERSION
        && from_analyzer.as_deref() == Some(finding.fingerprint.as_str())
    {
        return;
    }
    if !result
        .get("partialFingerprints")
        .is_some_and(Value::is_object)
    {
        result.insert("partialFingerprints".into(), json!({}));
    }
    result["partialFingerprints"]
        .as_object_mut()
        .expect("checked above")
        .insert(
            format!("{OWN_FINGERPRINT_PREFIX}{}", finding.fingerprint_version),
            json!(finding.fingerprint),
        );
}
