//! Pull-request drafts: a title and a Markdown body built from the open
//! findings of one run and the SARIF fixes that address them. The server
//! has no source text, so each diff is built from the SARIF replacements
//! alone (see `hunk`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde_json::Value;

use super::export::change_path;
use crate::pb::Priority;
use crate::storage::models::FixWithFindings;
use crate::storage::reports::ListedFinding;

/// Size of the body, in bytes, after which the remaining fix sections are
/// left out. It keeps the stored `{"title", "body"}` document under the
/// 1 MiB limit of JSON documents even when escaping doubles the body.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// Records and options that a draft is built from.
#[derive(Debug, Clone, Copy)]
pub struct DraftInput<'a> {
    pub crew_name: &'a str,
    pub crew_output_id: i64,
    pub file_path_prefix: Option<&'a str>,
    /// Source root recorded by the import of the run, if any.
    pub source_root: Option<&'a str>,
    pub findings: &'a [ListedFinding],
    pub fixes: &'a [FixWithFindings],
}

/// A built draft, ready to store as a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub title: String,
    pub body: String,
    /// Longest directory prefix that the changed files share, or the first
    /// file when they share none.
    pub file_path: String,
    /// Listed findings that a fix of the draft addresses, ascending.
    pub finding_ids: Vec<i64>,
}

fn plural(count: usize, singular: &str, plural: &str) -> String {
    if count == 1 {
        format!("{count} {singular}")
    } else {
        format!("{count} {plural}")
    }
}

fn priority_name(priority: i32) -> &'static str {
    Priority::try_from(priority)
        .map(|priority| priority.as_str_name())
        .unwrap_or("PRIORITY_UNSPECIFIED")
        .trim_start_matches("PRIORITY_")
}

/// Escapes text for a Markdown table cell.
fn table_cell(text: &str) -> String {
    if text.is_empty() {
        return "(none)".to_string();
    }
    text.replace('|', "\\|")
}

/// Returns the longest directory prefix shared by `files`, or the first
/// file when they share none or there is only one.
fn common_path(files: &[&str]) -> String {
    let Some(first) = files.first() else {
        return String::new();
    };
    if files.len() == 1 {
        return first.to_string();
    }
    let directory = |path: &str| -> Vec<String> {
        let mut parts: Vec<String> = path.split('/').map(str::to_string).collect();
        parts.pop();
        parts
    };
    let mut shared = directory(first);
    for file in &files[1..] {
        let parts = directory(file);
        let same = shared
            .iter()
            .zip(&parts)
            .take_while(|(a, b)| a == b)
            .count();
        shared.truncate(same);
    }
    let joined = shared.join("/");
    if joined.is_empty() || joined == "/" {
        first.to_string()
    } else {
        joined
    }
}

/// Writes one replacement as a hunk: the header from the deleted region's
/// lines, one `-` line that states the deleted region, and the inserted
/// text as `+` lines.
pub fn hunk(replacement: &Value) -> String {
    let region = &replacement["deletedRegion"];
    let start = region["startLine"].as_i64().unwrap_or(0);
    let end = region["endLine"].as_i64().unwrap_or(start).max(start);
    let inserted = replacement["insertedContent"]["text"]
        .as_str()
        .unwrap_or("");
    let mut lines: Vec<&str> = inserted.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }

    let old_count = if start > 0 { end - start + 1 } else { 0 };
    let mut text = format!("@@ -{start},{old_count} +{start},{} @@\n", lines.len());
    if start > 0 {
        let start_column = region["startColumn"].as_i64().unwrap_or(1);
        let end_column = region["endColumn"]
            .as_i64()
            .map_or_else(|| "end".to_string(), |column| column.to_string());
        let _ = writeln!(
            text,
            "-[deleted region: lines {start}-{end}, columns {start_column}-{end_column}]"
        );
    } else {
        text.push_str("-[deleted region: no line numbers]\n");
    }
    for line in lines {
        let _ = writeln!(text, "+{line}");
    }
    text
}

/// Returns the unified diff of a SARIF fix, or `None` when it has no
/// replacements.
fn fix_diff(fix: &FixWithFindings, source_root: Option<&str>) -> Option<String> {
    let changes: Value = serde_json::from_str(&fix.fix.changes).ok()?;
    let mut diff = String::new();
    for (index, change) in changes["artifactChanges"].as_array()?.iter().enumerate() {
        let replacements = match change["replacements"].as_array() {
            Some(replacements) if !replacements.is_empty() => replacements,
            _ => continue,
        };
        let path = change_path(&fix.fix.file_path, index, change, source_root);
        let _ = writeln!(diff, "--- a/{path}\n+++ b/{path}");
        for replacement in replacements {
            diff.push_str(&hunk(replacement));
        }
    }
    (!diff.is_empty()).then_some(diff)
}

/// Returns a code fence longer than any run of backticks in `text`.
fn fence_for(text: &str) -> String {
    let longest = text.split(|ch| ch != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// Builds the draft; `input.findings` must not be empty.
pub fn build(input: DraftInput<'_>) -> Draft {
    let listed: BTreeSet<i64> = input.findings.iter().map(|finding| finding.id).collect();
    let fixed: BTreeSet<i64> = input
        .fixes
        .iter()
        .flat_map(|fix| fix.finding_ids.iter().copied())
        .filter(|id| listed.contains(id))
        .collect();
    // Results without a location have an empty path and name no file.
    let finding_files: BTreeSet<&str> = input
        .findings
        .iter()
        .map(|finding| finding.file_path.as_str())
        .filter(|path| !path.is_empty())
        .collect();

    let title = format!(
        "Fix {} of {} in {}",
        plural(input.findings.len(), "finding", "findings"),
        input.crew_name,
        plural(finding_files.len(), "file", "files"),
    );

    let mut body = String::new();
    let scope = input
        .file_path_prefix
        .map(|prefix| format!(" under `{prefix}`"))
        .unwrap_or_default();
    let _ = writeln!(
        body,
        "Crew output {} of {} has {} (OPEN, CONFIRMED or REOPENED){scope}; {} {} a fix, in {}.\n",
        input.crew_output_id,
        input.crew_name,
        plural(input.findings.len(), "open finding", "open findings"),
        fixed.len(),
        if fixed.len() == 1 { "has" } else { "have" },
        plural(input.fixes.len(), "fix", "fixes"),
    );

    write_table(&mut body, input.findings, &fixed);
    let changed_files = write_files(&mut body, input.fixes);
    write_fixes(&mut body, &input);

    let files: Vec<&str> = if changed_files.is_empty() {
        finding_files.into_iter().collect()
    } else {
        changed_files
    };
    let file_path = match common_path(&files) {
        path if path.is_empty() => input.file_path_prefix.unwrap_or(".").to_string(),
        path => path,
    };
    Draft {
        title,
        body,
        file_path,
        finding_ids: fixed.into_iter().collect(),
    }
}

/// Writes the counts by priority (highest first) and rule.
fn write_table(body: &mut String, findings: &[ListedFinding], fixed: &BTreeSet<i64>) {
    let mut counts: BTreeMap<(std::cmp::Reverse<i32>, &str), (usize, usize)> = BTreeMap::new();
    for finding in findings {
        let entry = counts
            .entry((
                std::cmp::Reverse(finding.priority),
                finding.rule_id.as_str(),
            ))
            .or_default();
        entry.0 += 1;
        if fixed.contains(&finding.id) {
            entry.1 += 1;
        }
    }
    body.push_str("## Findings by priority and rule\n\n");
    body.push_str("| Priority | Rule | Findings | With a fix |\n");
    body.push_str("| --- | --- | ---: | ---: |\n");
    for ((priority, rule_id), (count, with_fix)) in &counts {
        let _ = writeln!(
            body,
            "| {} | {} | {count} | {with_fix} |",
            priority_name(priority.0),
            table_cell(rule_id)
        );
    }
    body.push('\n');
}

/// Writes the files that the fixes change and returns them, sorted.
fn write_files<'a>(body: &mut String, fixes: &'a [FixWithFindings]) -> Vec<&'a str> {
    let mut per_file: BTreeMap<&str, usize> = BTreeMap::new();
    for fix in fixes {
        *per_file.entry(fix.fix.file_path.as_str()).or_default() += 1;
    }
    body.push_str("## Files changed\n\n");
    if per_file.is_empty() {
        body.push_str("No fix addresses these findings.\n\n");
        return Vec::new();
    }
    for (file, count) in &per_file {
        let _ = writeln!(body, "- `{file}`: {}", plural(*count, "fix", "fixes"));
    }
    body.push('\n');
    per_file.into_keys().collect()
}

/// Writes one section per fix, until the body reaches `MAX_BODY_BYTES`.
fn write_fixes(body: &mut String, input: &DraftInput<'_>) {
    if input.fixes.is_empty() {
        return;
    }
    body.push_str("## Fixes\n");
    let listed: BTreeSet<i64> = input.findings.iter().map(|finding| finding.id).collect();
    for (index, fix) in input.fixes.iter().enumerate() {
        if body.len() >= MAX_BODY_BYTES {
            let _ = writeln!(
                body,
                "\n{} left out: the body reached {} KiB.",
                plural(input.fixes.len() - index, "more fix is", "more fixes are"),
                MAX_BODY_BYTES / 1024
            );
            return;
        }
        let description = if fix.fix.description.is_empty() {
            "(no description)"
        } else {
            fix.fix.description.as_str()
        };
        let addressed: Vec<String> = fix
            .finding_ids
            .iter()
            .filter(|id| listed.contains(id))
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            body,
            "\n### Fix {}: {description}\n\nFile `{}`; addresses {} {}.\n",
            fix.fix.id,
            fix.fix.file_path,
            if addressed.len() == 1 {
                "finding"
            } else {
                "findings"
            },
            addressed.join(", ")
        );
        match fix_diff(fix, input.source_root) {
            Some(diff) => {
                let fence = fence_for(&diff);
                let _ = write!(body, "{fence}diff\n{diff}{fence}\n");
            }
            None => body.push_str("No diff: the fix has no SARIF replacements.\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hunk_states_region_and_inserted_lines() {
        let replacement = json!({
            "deletedRegion": {"startLine": 5, "startColumn": 40, "endLine": 5, "endColumn": 64},
            "insertedContent": {"text": "ALGORITHMS"}
        });
        assert_eq!(
            hunk(&replacement),
            "@@ -5,1 +5,1 @@\n-[deleted region: lines 5-5, columns 40-64]\n+ALGORITHMS\n"
        );
    }

    #[test]
    fn hunk_of_deletion_has_no_added_lines() {
        let replacement = json!({"deletedRegion": {"startLine": 3, "endLine": 4, "endColumn": 1}});
        assert_eq!(
            hunk(&replacement),
            "@@ -3,2 +3,0 @@\n-[deleted region: lines 3-4, columns 1-1]\n"
        );
    }

    #[test]
    fn hunk_splits_inserted_text_on_newlines() {
        let replacement = json!({
            "deletedRegion": {"startLine": 7},
            "insertedContent": {"text": "a\n\nb\n"}
        });
        assert_eq!(
            hunk(&replacement),
            "@@ -7,1 +7,3 @@\n-[deleted region: lines 7-7, columns 1-end]\n+a\n+\n+b\n"
        );
    }

    #[test]
    fn common_path_is_shared_directory() {
        assert_eq!(common_path(&["lib/a/x.py", "lib/a/y.py"]), "lib/a");
        assert_eq!(common_path(&["lib/a/x.py", "lib/b/y.py"]), "lib");
        assert_eq!(common_path(&["lib/a/x.py"]), "lib/a/x.py");
        assert_eq!(common_path(&["a.py", "b.py"]), "a.py");
    }

    #[test]
    fn fence_outgrows_backticks() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("a ```` b"), "`````");
    }
}
