//! State analysis on stored runs: comparing two runs, carrying triage
//! decisions to later runs of the same crew, and marking findings FIXED and
//! fixes VERIFIED or REGRESSED when a run of the crew finishes.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::audit::{self, Change};
use super::models::{CrewOutputRow, FindingRow, NewFindingRow};
use super::schema::{
    code_analysis_results as findings, crew_outputs, error_handling_results as fixes,
    finding_triage, fix_findings,
};
use super::{
    Conn, StorageError, crew_outputs as runs, findings as finding_queries, now_micros, with_conn,
};
use crate::pb::{CrewOutputStatus, FindingStatus, FixStatus};
use crate::state::matching::{self, Candidate, Matching};

/// Ids per `IN (...)` list, below SQLite's limit of 32,766 parameters.
const IDS_PER_QUERY: usize = 10_000;

/// Filters applied to both runs before their findings are matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CompareFilter {
    pub file_path_prefix: Option<String>,
    pub rule_id: Option<String>,
    pub min_priority: Option<i32>,
}

/// Two runs and how their findings match.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub base: CrewOutputRow,
    pub head: CrewOutputRow,
    pub matching: Matching,
}

fn candidates(
    conn: &mut Conn,
    run_id: i64,
    filter: &CompareFilter,
) -> Result<Vec<Candidate>, StorageError> {
    let rows: Vec<(i64, String, i32)> = with_conn!(conn, c => {
        let mut query = findings::table
            .filter(findings::crew_output_id.eq(run_id))
            .select((findings::id, findings::fingerprint, findings::start_line))
            .into_boxed();
        if let Some(prefix) = &filter.file_path_prefix {
            let pattern = format!("{}%", finding_queries::escape_like(prefix));
            query = query.filter(findings::file_path.like(pattern).escape('\\'));
        }
        if let Some(rule_id) = &filter.rule_id {
            query = query.filter(findings::rule_id.eq(rule_id));
        }
        if let Some(priority) = filter.min_priority {
            query = query.filter(findings::priority.ge(priority));
        }
        query.load(c)?
    });
    Ok(rows
        .into_iter()
        .map(|(id, fingerprint, line)| Candidate {
            id,
            fingerprint,
            line,
        })
        .collect())
}

/// Matches the findings of two runs, both filtered by `filter`.
pub fn compare(
    conn: &mut Conn,
    base_id: i64,
    head_id: i64,
    filter: &CompareFilter,
) -> Result<Comparison, StorageError> {
    let base = runs::get(conn, base_id)?;
    let head = runs::get(conn, head_id)?;
    let base_findings = candidates(conn, base_id, filter)?;
    let head_findings = candidates(conn, head_id, filter)?;
    Ok(Comparison {
        base,
        head,
        matching: matching::match_runs(&base_findings, &head_findings),
    })
}

/// Loads findings by id, in the order of `ids`.
pub fn findings_by_ids(conn: &mut Conn, ids: &[i64]) -> Result<Vec<FindingRow>, StorageError> {
    let rows: Vec<FindingRow> = with_conn!(conn, c => {
        findings::table
            .filter(findings::id.eq_any(ids))
            .select(FindingRow::as_select())
            .load(c)?
    });
    let mut by_id: HashMap<i64, FindingRow> = rows.into_iter().map(|row| (row.id, row)).collect();
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// Reads the triage state of the given fingerprints of a crew.
fn triage_of(
    conn: &mut Conn,
    crew_name: &str,
    fingerprints: &[&str],
) -> Result<HashMap<String, (i32, String, i32)>, StorageError> {
    let mut found = HashMap::new();
    for chunk in fingerprints.chunks(IDS_PER_QUERY) {
        let rows: Vec<(String, i32, String, i32)> = with_conn!(conn, c => {
            finding_triage::table
                .filter(finding_triage::crew_name.eq(crew_name))
                .filter(finding_triage::fingerprint.eq_any(chunk))
                .select((
                    finding_triage::fingerprint,
                    finding_triage::status,
                    finding_triage::reason,
                    finding_triage::dismiss_reason,
                ))
                .load(c)?
        });
        found.extend(
            rows.into_iter()
                .map(|(fingerprint, status, reason, dismiss_reason)| {
                    (fingerprint, (status, reason, dismiss_reason))
                }),
        );
    }
    Ok(found)
}

/// Stores the triage state of one fingerprint of a crew.
pub fn record_triage(
    conn: &mut Conn,
    crew_name: &str,
    fingerprint: &str,
    status: i32,
    reason: &str,
    dismiss_reason: i32,
    finding_id: i64,
) -> Result<(), StorageError> {
    let now = now_micros();
    with_conn!(conn, c => {
        diesel::insert_into(finding_triage::table)
            .values((
                finding_triage::crew_name.eq(crew_name),
                finding_triage::fingerprint.eq(fingerprint),
                finding_triage::status.eq(status),
                finding_triage::reason.eq(reason),
                finding_triage::dismiss_reason.eq(dismiss_reason),
                finding_triage::finding_id.eq(finding_id),
                finding_triage::updated_at.eq(now),
            ))
            .on_conflict((finding_triage::crew_name, finding_triage::fingerprint))
            .do_update()
            .set((
                finding_triage::status.eq(status),
                finding_triage::reason.eq(reason),
                finding_triage::dismiss_reason.eq(dismiss_reason),
                finding_triage::finding_id.eq(finding_id),
                finding_triage::updated_at.eq(now),
            ))
            .execute(c)?;
    });
    Ok(())
}

/// Inserts the findings of a run of `crew_name`, each starting from the
/// crew's triage of its fingerprint: a CONFIRMED or DISMISSED decision
/// carries over with its reason, and a fingerprint that was FIXED comes
/// back as REOPENED. Sets those statuses on `rows` and returns the new ids
/// in the order of `rows`.
pub fn insert_findings(
    conn: &mut Conn,
    crew_name: &str,
    rows: &mut [NewFindingRow],
) -> Result<Vec<i64>, StorageError> {
    let fingerprints: Vec<&str> = rows.iter().map(|row| row.fingerprint.as_str()).collect();
    let triage = triage_of(conn, crew_name, &fingerprints)?;

    let mut reopened = Vec::new();
    for (index, row) in rows.iter_mut().enumerate() {
        let Some((status, reason, dismiss_reason)) = triage.get(&row.fingerprint) else {
            continue;
        };
        match FindingStatus::try_from(*status) {
            Ok(FindingStatus::Confirmed | FindingStatus::Dismissed) => {
                row.status = *status;
                row.status_reason = reason.clone();
                row.dismiss_reason = *dismiss_reason;
            }
            Ok(FindingStatus::Fixed) => {
                row.status = FindingStatus::Reopened as i32;
                row.status_reason = "reported again after a run no longer reported it".to_string();
                reopened.push(index);
            }
            _ => {}
        }
    }

    let ids = finding_queries::insert_rows(conn, rows)?;
    for index in reopened {
        let row = &rows[index];
        record_triage(
            conn,
            crew_name,
            &row.fingerprint,
            row.status,
            &row.status_reason,
            0,
            ids[index],
        )?;
    }
    Ok(ids)
}

/// The newest SUCCEEDED run of the crew created before `run`.
fn previous_run(conn: &mut Conn, run: &CrewOutputRow) -> Result<Option<i64>, StorageError> {
    with_conn!(conn, c => {
        Ok(crew_outputs::table
            .filter(crew_outputs::crew_name.eq(&run.crew_name))
            .filter(crew_outputs::status.eq(CrewOutputStatus::Succeeded as i32))
            .filter(crew_outputs::id.lt(run.id))
            .order(crew_outputs::id.desc())
            .select(crew_outputs::id)
            .first(c)
            .optional()?)
    })
}

/// Applies what a finished run shows about earlier runs of its crew:
/// findings of the previous SUCCEEDED run that this run no longer reports
/// become FIXED (DISMISSED ones keep their decision), and fixes of earlier
/// runs become VERIFIED when none of their findings is reported any more,
/// or REGRESSED when one comes back after they were verified.
pub fn analyze_finished_run(conn: &mut Conn, run: &CrewOutputRow) -> Result<(), StorageError> {
    if run.status != CrewOutputStatus::Succeeded as i32 {
        return Ok(());
    }
    let head = candidates(conn, run.id, &CompareFilter::default())?;
    let reported: HashSet<&str> = head
        .iter()
        .map(|finding| finding.fingerprint.as_str())
        .collect();
    if let Some(previous) = previous_run(conn, run)? {
        let base = candidates(conn, previous, &CompareFilter::default())?;
        let matching = matching::match_runs(&base, &head);
        mark_fixed(conn, run, &matching.resolved, &reported)?;
    }
    verify_fixes(conn, run, &reported)
}

/// Marks the given findings of the previous run FIXED. The crew's decision
/// on a fingerprint becomes FIXED only when this run reports it nowhere: a
/// fingerprint reported three times before and twice now resolves one
/// finding, but the crew keeps its decision for the two that remain.
fn mark_fixed(
    conn: &mut Conn,
    run: &CrewOutputRow,
    resolved: &[i64],
    reported: &HashSet<&str>,
) -> Result<(), StorageError> {
    let reason = format!("not reported by run {}", run.id);
    let now = now_micros();
    let status_name = |status: i32| {
        FindingStatus::try_from(status)
            .map(|status| status.as_str_name())
            .unwrap_or("")
    };
    for chunk in resolved.chunks(IDS_PER_QUERY) {
        let changed = findings::table
            .filter(findings::id.eq_any(chunk))
            .filter(findings::status.ne(FindingStatus::Dismissed as i32));
        // The statuses before the change, for the audit events.
        let before: HashMap<i64, i32> = with_conn!(conn, c => {
            changed
                .clone()
                .select((findings::id, findings::status))
                .load::<(i64, i32)>(c)?
                .into_iter()
                .collect()
        });
        let fixed: Vec<(i64, String)> = with_conn!(conn, c => {
            diesel::update(changed)
                .set((
                    findings::status.eq(FindingStatus::Fixed as i32),
                    findings::status_reason.eq(&reason),
                    findings::revision.eq(findings::revision + 1),
                    findings::updated_at.eq(now),
                ))
                .returning((findings::id, findings::fingerprint))
                .get_results(c)?
        });
        for (id, _) in &fixed {
            let old = serde_json::json!({
                "status": before.get(id).map_or("", |status| status_name(*status)),
            });
            let new = serde_json::json!({
                "status": status_name(FindingStatus::Fixed as i32),
                "status_reason": reason,
            });
            audit::append(
                conn,
                Change::of("finding.fixed", "finding", *id, Some(&old), Some(&new)),
            )?;
        }
        for (id, fingerprint) in fixed {
            if reported.contains(fingerprint.as_str()) {
                continue;
            }
            record_triage(
                conn,
                &run.crew_name,
                &fingerprint,
                FindingStatus::Fixed as i32,
                &reason,
                0,
                id,
            )?;
        }
    }
    Ok(())
}

fn verify_fixes(
    conn: &mut Conn,
    run: &CrewOutputRow,
    reported: &HashSet<&str>,
) -> Result<(), StorageError> {
    let watched = [
        FixStatus::Applied as i32,
        FixStatus::Merged as i32,
        FixStatus::Verified as i32,
    ];
    // Each watched fix of the crew's earlier runs, with the fingerprints of
    // the findings it addresses.
    let links: Vec<(i64, i32, String)> = with_conn!(conn, c => {
        fixes::table
            .inner_join(crew_outputs::table)
            .inner_join(fix_findings::table.inner_join(findings::table))
            .filter(crew_outputs::crew_name.eq(&run.crew_name))
            .filter(crew_outputs::id.lt(run.id))
            .filter(fixes::status.eq_any(watched))
            .select((fixes::id, fixes::status, findings::fingerprint))
            .load(c)?
    });
    let mut by_fix: HashMap<i64, (i32, bool)> = HashMap::new();
    for (fix_id, status, fingerprint) in links {
        let entry = by_fix.entry(fix_id).or_insert((status, false));
        entry.1 |= reported.contains(fingerprint.as_str());
    }

    let now = now_micros();
    for (fix_id, (status, still_reported)) in by_fix {
        let next = match (FixStatus::try_from(status), still_reported) {
            (Ok(FixStatus::Applied | FixStatus::Merged), false) => FixStatus::Verified,
            (Ok(FixStatus::Verified), true) => FixStatus::Regressed,
            _ => continue,
        };
        let before = serde_json::json!({
            "status": FixStatus::try_from(status).map(|s| s.as_str_name()).unwrap_or(""),
        });
        let after = serde_json::json!({ "status": next.as_str_name(), "run": run.id });
        audit::append(
            conn,
            Change::of("fix.verify", "fix", fix_id, Some(&before), Some(&after)),
        )?;
        with_conn!(conn, c => {
            diesel::update(fixes::table.find(fix_id))
                .set((
                    fixes::status.eq(next as i32),
                    fixes::revision.eq(fixes::revision + 1),
                    fixes::updated_at.eq(now),
                ))
                .execute(c)?
        });
    }
    Ok(())
}
