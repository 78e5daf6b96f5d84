//! Bulk import of whole runs (SARIF logs): crew outputs, findings, fixes and
//! their links, all in one transaction.

use std::collections::BTreeSet;

use super::audit::{self, Change};
use super::models::{FixFindingRow, NewCrewOutputRow, NewFindingRow, NewFixRow};
use super::{Conn, StorageError, crew_outputs, fixes, state};

/// One run to import. `fixes` pairs each fix with the indexes of the
/// findings in `findings` it addresses; `crew_output_id` of the rows is
/// filled in on insert.
#[derive(Debug, Clone)]
pub struct RunImport {
    pub crew_output: NewCrewOutputRow,
    pub findings: Vec<NewFindingRow>,
    pub fixes: Vec<(Vec<usize>, NewFixRow)>,
}

/// Records stored for one imported run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRun {
    pub crew_output_id: i64,
    pub finding_count: usize,
    pub fix_count: usize,
    pub file_paths: BTreeSet<String>,
}

pub fn import_runs(
    conn: &mut Conn,
    runs: Vec<RunImport>,
) -> Result<Vec<ImportedRun>, StorageError> {
    audit::transaction(conn, |conn| {
        let mut imported = Vec::with_capacity(runs.len());
        for mut run in runs {
            let run_row = crew_outputs::insert(conn, &run.crew_output)?;
            let crew_output_id = run_row.id;
            for finding in &mut run.findings {
                finding.crew_output_id = crew_output_id;
            }
            let finding_ids = state::insert_findings(conn, &run_row.crew_name, &mut run.findings)?;

            let (finding_indexes, mut fix_rows): (Vec<Vec<usize>>, Vec<NewFixRow>) =
                run.fixes.into_iter().unzip();
            for fix in &mut fix_rows {
                fix.crew_output_id = crew_output_id;
            }
            let fix_ids = fixes::insert_rows(conn, &fix_rows)?;
            let links: Vec<FixFindingRow> = finding_indexes
                .iter()
                .zip(fix_ids)
                .flat_map(|(indexes, fix_id)| {
                    let finding_ids = &finding_ids;
                    indexes.iter().map(move |index| FixFindingRow {
                        fix_id,
                        finding_id: finding_ids[*index],
                    })
                })
                .collect();
            fixes::insert_links(conn, &links)?;
            let summary = serde_json::json!({
                "crew_output": &run_row,
                "finding_count": finding_ids.len(),
                "fix_count": fix_rows.len(),
            });
            audit::append(
                conn,
                Change::of(
                    "crew_output.import",
                    "crew_output",
                    crew_output_id,
                    None,
                    Some(&summary),
                ),
            )?;
            state::analyze_finished_run(conn, &run_row)?;

            imported.push(ImportedRun {
                crew_output_id,
                finding_count: run.findings.len(),
                fix_count: fix_rows.len(),
                // Results without a location have an empty path and name no file.
                file_paths: run
                    .findings
                    .iter()
                    .filter(|finding| !finding.file_path.is_empty())
                    .map(|finding| finding.file_path.clone())
                    .collect(),
            });
        }
        Ok(imported)
    })
}
