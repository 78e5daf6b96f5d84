use super::*;

const SMALL_LOG: &str = r#"{
  "version": "2.1.0",
  "runs": [{
    "tool": {"driver": {"name": "bandit", "version": "1.7.9", "rules": [
      {"id": "B105", "defaultConfiguration": {"level": "note"},
       "shortDescription": {"text": "Hardcoded password"}},
      {"id": "S1", "properties": {"security-severity": "9.1"}}
    ]}},
    "results": [
      {"ruleId": "B105", "message": {"text": "Possible hardcoded password"},
       "locations": [{"physicalLocation": {
         "artifactLocation": {"uri": "file:///src/app/settings.py"},
         "region": {"startLine": 12, "startColumn": 5, "endColumn": 20}}}],
       "fixes": [{"description": {"text": "Read it from the environment"},
                  "artifactChanges": [{"artifactLocation": {"uri": "file:///src/app/settings.py"},
                                       "replacements": []}]}]},
      {"ruleId": "S1", "level": "warning", "message": {"text": "Injection"},
       "partialFingerprints": {"primaryLocationLineHash": "abc:1"},
       "locations": [{"physicalLocation": {"artifactLocation": {"uri": "lib/db.py"}}}]},
      {"ruleIndex": 0, "message": {}}
    ]
  }]
}"#;

fn parse_small() -> Vec<ParsedRun> {
    let options = ImportOptions {
        source_root: Some("/src".to_string()),
    };
    parse(SMALL_LOG.as_bytes(), &options).unwrap()
}

#[test]
fn results_become_findings_with_fixes() {
    let runs = parse_small();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].tool_name, "bandit");
    let first = &runs[0].findings[0];
    assert_eq!(first.file_path, "app/settings.py");
    assert_eq!(first.rule_id, "B105");
    assert_eq!((first.start_line, first.end_line), (12, 12));
    assert_eq!((first.start_column, first.end_column), (5, 20));
    assert_eq!(first.fixes.len(), 1);
    assert_eq!(first.fixes[0].file_path, "app/settings.py");
    assert_eq!(first.fixes[0].description, "Read it from the environment");
    assert_eq!(first.fingerprint_version, fingerprint::DERIVED_VERSION);
    assert!(first.analysis.contains("Possible hardcoded password"));
}

#[test]
fn priority_follows_level_and_security_severity() {
    let runs = parse_small();
    // Rule default level "note".
    assert_eq!(runs[0].findings[0].priority, Priority::Low);
    // security-severity 9.1 outranks the result's own level.
    assert_eq!(runs[0].findings[1].priority, Priority::Critical);
}

#[test]
fn analyzer_fingerprints_are_kept() {
    let runs = parse_small();
    let second = &runs[0].findings[1];
    assert_eq!(second.fingerprint, "primaryLocationLineHash:abc:1");
    assert_eq!(second.fingerprint_version, fingerprint::EXTERNAL_VERSION);
    assert_eq!(second.file_path, "lib/db.py");
}

#[test]
fn rule_index_supplies_id_and_message() {
    let runs = parse_small();
    let third = &runs[0].findings[2];
    assert_eq!(third.rule_id, "");
    assert_eq!(third.message, "Hardcoded password");
    assert_eq!(third.file_path, "");
}

#[test]
fn other_versions_are_rejected() {
    let error = parse(
        br#"{"version": "2.0.0", "runs": []}"#,
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "SARIF version \"2.0.0\" is not supported; only 2.1.0 is"
    );
}

#[test]
fn invalid_result_names_its_position() {
    let log = r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
        "results": [{"message": {"text": "ok"}}, {"locations": 5}]}]}"#;
    let error = parse(log.as_bytes(), &ImportOptions::default()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("run 0, result 1: invalid result"),
        "{error}"
    );
}

#[test]
fn gzip_is_detected_and_bounded() {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(SMALL_LOG.as_bytes()).unwrap();
    let compressed = encoder.finish().unwrap();
    assert_eq!(
        decompress(compressed.clone(), 1 << 20).unwrap(),
        SMALL_LOG.as_bytes()
    );
    assert!(matches!(
        decompress(compressed, 100),
        Err(SarifError::TooLarge(100))
    ));
    assert!(matches!(
        decompress(vec![b' '; 101], 100),
        Err(SarifError::TooLarge(100))
    ));
}

/// Parses one result of a run of "ruff" without a source root.
fn parse_result_json(result: &str) -> ParsedFinding {
    let log = format!(
        r#"{{"version": "2.1.0", "runs": [{{"tool": {{"driver": {{"name": "ruff"}}}}, "results": [{result}]}}]}}"#
    );
    let mut runs = parse(log.as_bytes(), &ImportOptions::default()).unwrap();
    runs.remove(0).findings.remove(0)
}

#[test]
fn own_fingerprint_is_kept_verbatim() {
    let finding = parse_result_json(
        r#"{"ruleId": "F401", "message": {"text": "unused"},
            "partialFingerprints": {"codeAnalyzer/v1": "0123abcd", "a": "b"}}"#,
    );
    assert_eq!(finding.fingerprint, "0123abcd");
    assert_eq!(finding.fingerprint_version, fingerprint::DERIVED_VERSION);

    let finding = parse_result_json(
        r#"{"ruleId": "F401", "message": {"text": "unused"},
            "partialFingerprints": {"codeAnalyzer/v0": "client-key"}}"#,
    );
    assert_eq!(finding.fingerprint, "client-key");
    assert_eq!(finding.fingerprint_version, fingerprint::EXTERNAL_VERSION);
}

#[test]
fn own_fingerprint_key_is_not_an_analyzer_fingerprint() {
    let finding = parse_result_json(
        r#"{"ruleId": "F401", "message": {"text": "unused"},
            "partialFingerprints": {"codeAnalyzer/v9": "unknown-version"}}"#,
    );
    assert_eq!(finding.fingerprint_version, fingerprint::DERIVED_VERSION);
    assert_eq!(
        finding.fingerprint,
        fingerprint::derive("F401", "", "unused")
    );
}

#[test]
fn relative_uri_with_base_stays_relative() {
    let result = r#"{"ruleId": "F401", "message": {"text": "unused"},
        "locations": [{"physicalLocation": {"artifactLocation":
          {"uri": "lib/my%20tools/a.py", "uriBaseId": "%SRCROOT%"}}}]}"#;
    assert_eq!(parse_result_json(result).file_path, "lib/my tools/a.py");

    let log = format!(
        r#"{{"version": "2.1.0", "runs": [{{"tool": {{"driver": {{"name": "ruff"}}}}, "results": [{result}]}}]}}"#
    );
    let options = ImportOptions {
        source_root: Some("/home/dev/crewAI".to_string()),
    };
    let runs = parse(log.as_bytes(), &options).unwrap();
    assert_eq!(runs[0].findings[0].file_path, "lib/my tools/a.py");
}

#[test]
fn other_results_are_read_and_removed() {
    let finding = parse_result_json(
        r#"{"ruleId": "S105", "message": {"text": "password"},
            "fixes": [
              {"artifactChanges": [{"replacements": []}],
               "properties": {"codeAnalyzer/otherResults": [2, "x", -1, 5], "team": "a"}},
              {"artifactChanges": [{"replacements": []}],
               "properties": {"codeAnalyzer/otherResults": "not a list"}},
              {"artifactChanges": [{"replacements": []}]}
            ]}"#,
    );
    let [listed, invalid, plain] = &finding.fixes[..] else {
        panic!("expected three fixes");
    };
    assert_eq!(listed.other_results, [2, 5]);
    let changes: serde_json::Value = serde_json::from_str(&listed.changes).unwrap();
    assert_eq!(changes["properties"], serde_json::json!({"team": "a"}));

    assert!(invalid.other_results.is_empty());
    let changes: serde_json::Value = serde_json::from_str(&invalid.changes).unwrap();
    assert!(changes.get("properties").is_none());

    assert!(plain.other_results.is_empty());
    assert_eq!(
        plain.changes,
        r#"{"artifactChanges": [{"replacements": []}]}"#
    );
}
