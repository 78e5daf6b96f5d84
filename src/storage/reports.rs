//! Queries behind ReportService: the findings and fixes of one run, read
//! page by page for a SARIF export, and the open findings and their fixes
//! for a pull-request draft.

use std::collections::{BTreeSet, HashMap};

use diesel::prelude::*;

use super::findings::escape_like;
use super::models::{CrewOutputRow, FindingRow, FixRow, FixWithFindings};
use super::schema::{
    code_analysis_results as findings, error_handling_results as fixes, fix_findings,
};
use super::{Conn, StorageError, crew_outputs, fixes as fix_queries, with_conn};
use crate::pb::{FindingStatus, FixStatus};

/// Ids per `IN (...)` list, below SQLite's limit of 32,766 parameters.
const IDS_PER_QUERY: usize = 10_000;

/// Run data that an export reads before its first result.
#[derive(Debug, Clone)]
pub struct ExportStart {
    pub crew_output: CrewOutputRow,
    /// Distinct rule ids of the run's findings up to `last_finding_id`, sorted.
    pub rule_ids: Vec<String>,
    /// Highest finding id of the run when the export started; findings
    /// recorded later are left out. `None` when the run has no findings.
    pub last_finding_id: Option<i64>,
}

/// One page of an export: findings in id order, and the fixes whose lowest
/// addressed finding is on this page.
#[derive(Debug, Clone)]
pub struct ExportPage {
    pub findings: Vec<FindingRow>,
    pub fixes: Vec<ExportedFix>,
}

/// A fix in an export, under the result of the lowest finding it addresses.
#[derive(Debug, Clone)]
pub struct ExportedFix {
    /// Id of the lowest finding the fix addresses.
    pub finding_id: i64,
    /// Positions in the run's results (findings in id order, counting from
    /// 0) of the other findings the fix addresses, ascending.
    pub other_results: Vec<i64>,
    pub fix: FixRow,
}

/// A finding listed in a pull-request draft.
#[derive(Debug, Clone, Queryable)]
pub struct ListedFinding {
    pub id: i64,
    pub file_path: String,
    pub rule_id: String,
    pub priority: i32,
}

/// The records a pull-request draft is built from.
#[derive(Debug, Clone)]
pub struct DraftSources {
    pub crew_output: CrewOutputRow,
    /// Findings with status OPEN, CONFIRMED or REOPENED, in id order.
    pub findings: Vec<ListedFinding>,
    /// Fixes of the run, except PR_DRAFT ones, that address a listed
    /// finding, in id order.
    pub fixes: Vec<FixWithFindings>,
}

/// Finding statuses that a pull-request draft lists.
pub const DRAFT_STATUSES: [i32; 3] = [
    FindingStatus::Open as i32,
    FindingStatus::Confirmed as i32,
    FindingStatus::Reopened as i32,
];

/// Reads the run, the highest finding id and the rule ids up to it.
pub fn export_start(conn: &mut Conn, crew_output_id: i64) -> Result<ExportStart, StorageError> {
    let crew_output = crew_outputs::get(conn, crew_output_id)?;
    let last_finding_id: Option<i64> = with_conn!(conn, c => {
        findings::table
            .filter(findings::crew_output_id.eq(crew_output_id))
            .select(diesel::dsl::max(findings::id))
            .first(c)?
    });
    let rule_ids: Vec<String> = match last_finding_id {
        None => Vec::new(),
        Some(last) => with_conn!(conn, c => {
            findings::table
                .filter(findings::crew_output_id.eq(crew_output_id))
                .filter(findings::id.le(last))
                .select(findings::rule_id)
                .distinct()
                .order(findings::rule_id)
                .load(c)?
        }),
    };
    Ok(ExportStart {
        crew_output,
        rule_ids,
        last_finding_id,
    })
}

/// Reads up to `limit` findings of the run with ids in `(after, last]`, and
/// the fixes that belong under them.
pub fn export_page(
    conn: &mut Conn,
    crew_output_id: i64,
    after: i64,
    last: i64,
    limit: i64,
) -> Result<ExportPage, StorageError> {
    let rows: Vec<FindingRow> = with_conn!(conn, c => {
        findings::table
            .filter(findings::crew_output_id.eq(crew_output_id))
            .filter(findings::id.gt(after))
            .filter(findings::id.le(last))
            .order(findings::id)
            .limit(limit)
            .select(FindingRow::as_select())
            .load(c)?
    });
    let page_ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let fixes = fixes_owned_by(conn, crew_output_id, &page_ids, last)?;
    Ok(ExportPage {
        findings: rows,
        fixes,
    })
}

/// Returns the fixes whose lowest addressed finding is one of `finding_ids`,
/// in id order. Links never cross runs, so a fix belongs to exactly one page
/// of its run's export. Findings above `last`, which the export leaves out,
/// are left out of `other_results` too.
fn fixes_owned_by(
    conn: &mut Conn,
    crew_output_id: i64,
    finding_ids: &[i64],
    last: i64,
) -> Result<Vec<ExportedFix>, StorageError> {
    if finding_ids.is_empty() {
        return Ok(Vec::new());
    }
    let candidates: Vec<i64> = with_conn!(conn, c => {
        fix_findings::table
            .filter(fix_findings::finding_id.eq_any(finding_ids))
            .select(fix_findings::fix_id)
            .distinct()
            .load(c)?
    });
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<(i64, i64)> = with_conn!(conn, c => {
        fix_findings::table
            .filter(fix_findings::fix_id.eq_any(&candidates))
            .select((fix_findings::fix_id, fix_findings::finding_id))
            .load(c)?
    });
    let mut addressed: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    for (fix_id, finding_id) in links {
        addressed.entry(fix_id).or_default().insert(finding_id);
    }
    let on_page: BTreeSet<i64> = finding_ids.iter().copied().collect();
    addressed.retain(|_, ids| ids.first().is_some_and(|lowest| on_page.contains(lowest)));
    let owned: Vec<i64> = addressed.keys().copied().collect();

    // The run's finding ids in id order, up to the highest other finding
    // of these fixes: a finding's position among them is its result's.
    let highest_other = addressed
        .values()
        .filter_map(|ids| ids.iter().skip(1).filter(|&&id| id <= last).max())
        .max()
        .copied();
    let run_ids: Vec<i64> = match highest_other {
        None => Vec::new(),
        Some(highest) => with_conn!(conn, c => {
            findings::table
                .filter(findings::crew_output_id.eq(crew_output_id))
                .filter(findings::id.le(highest))
                .order(findings::id)
                .select(findings::id)
                .load(c)?
        }),
    };

    let mut exported = Vec::with_capacity(owned.len());
    for row in fixes_by_ids(conn, &owned)? {
        let ids = &addressed[&row.id];
        let other_results = ids
            .iter()
            .skip(1)
            .filter_map(|id| run_ids.binary_search(id).ok())
            .map(|position| position as i64)
            .collect();
        exported.push(ExportedFix {
            finding_id: *ids.first().expect("a kept fix addresses a finding"),
            other_results,
            fix: row,
        });
    }
    Ok(exported)
}

/// Loads fixes by id, in id order.
fn fixes_by_ids(conn: &mut Conn, ids: &[i64]) -> Result<Vec<FixRow>, StorageError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let found: Vec<FixRow> = with_conn!(conn, c => {
            fixes::table
                .filter(fixes::id.eq_any(chunk))
                .select(FixRow::as_select())
                .load(c)?
        });
        rows.extend(found);
    }
    rows.sort_by_key(|row| row.id);
    Ok(rows)
}

/// Reads the run, its findings that a draft lists (optionally only under
/// `prefix`) and the fixes that address them.
pub fn draft_sources(
    conn: &mut Conn,
    crew_output_id: i64,
    prefix: Option<&str>,
) -> Result<DraftSources, StorageError> {
    let crew_output = crew_outputs::get(conn, crew_output_id)?;
    let pattern = prefix.map(|prefix| format!("{}%", escape_like(prefix)));

    let listed: Vec<ListedFinding> = with_conn!(conn, c => {
        let mut query = findings::table
            .filter(findings::crew_output_id.eq(crew_output_id))
            .filter(findings::status.eq_any(DRAFT_STATUSES))
            .into_boxed();
        if let Some(pattern) = &pattern {
            query = query.filter(findings::file_path.like(pattern.clone()).escape('\\'));
        }
        query
            .order(findings::id)
            .select((findings::id, findings::file_path, findings::rule_id, findings::priority))
            .load(c)?
    });

    let fix_ids: Vec<i64> = with_conn!(conn, c => {
        let mut query = fix_findings::table
            .inner_join(fixes::table)
            .inner_join(findings::table)
            .filter(findings::crew_output_id.eq(crew_output_id))
            .filter(findings::status.eq_any(DRAFT_STATUSES))
            .filter(fixes::status.ne(FixStatus::PrDraft as i32))
            .into_boxed();
        if let Some(pattern) = &pattern {
            query = query.filter(findings::file_path.like(pattern.clone()).escape('\\'));
        }
        query.select(fixes::id).distinct().load(c)?
    });
    let rows = fixes_by_ids(conn, &fix_ids)?;
    // NOTE: `with_findings` sends all fix ids in one `IN (...)` list, so on
    // SQLite a draft over more than 32,766 fixes fails.
    let fixes = fix_queries::with_findings(conn, rows)?;

    Ok(DraftSources {
        crew_output,
        findings: listed,
        fixes,
    })
}
