//! The history of one file: its findings and fixes across all runs, newest
//! first, merged from both tables under one keyset cursor.
//!
//! Events are ordered by `(created_at, sort_id)` descending, where
//! `sort_id = 2 * id + 1` for fixes and `2 * id` for findings, so a finding
//! and a fix never tie and one cursor walks both tables.

use std::collections::HashMap;

use diesel::prelude::*;

use super::models::{CrewOutputRow, FindingRow, FixRow, FixWithFindings};
use super::paging::{Cursor, Page, PageRequest, count_bounded};
use super::schema::{
    code_analysis_results as findings, crew_outputs, error_handling_results as fixes,
};
use super::{Conn, StorageError, fixes as fix_queries, with_conn};

/// A finding or a fix of the file.
#[derive(Debug, Clone)]
pub enum HistoryRecord {
    Finding(FindingRow),
    Fix(FixWithFindings),
}

/// One history event with the run it belongs to.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub record: HistoryRecord,
    pub crew_output: CrewOutputRow,
}

/// A page of history with the totals of each kind, each counted up to
/// `MAX_COUNTED_ROWS`.
#[derive(Debug, Clone)]
pub struct FileHistory {
    pub page: Page<HistoryEvent>,
    pub finding_count: i64,
    pub fix_count: i64,
}

fn finding_sort_id(id: i64) -> i64 {
    id * 2
}

fn fix_sort_id(id: i64) -> i64 {
    id * 2 + 1
}

/// Largest finding id and fix id that sort before `sort_id` at the same time.
fn ids_before(sort_id: i64) -> (i64, i64) {
    ((sort_id - 1).div_euclid(2), (sort_id - 2).div_euclid(2))
}

enum Row {
    Finding(FindingRow),
    Fix(FixRow),
}

impl Row {
    fn cursor(&self) -> Cursor {
        match self {
            Row::Finding(row) => Cursor {
                key: row.created_at,
                id: finding_sort_id(row.id),
            },
            Row::Fix(row) => Cursor {
                key: row.created_at,
                id: fix_sort_id(row.id),
            },
        }
    }

    fn crew_output_id(&self) -> i64 {
        match self {
            Row::Finding(row) => row.crew_output_id,
            Row::Fix(row) => row.crew_output_id,
        }
    }
}

pub fn file_history(
    conn: &mut Conn,
    file_path: &str,
    page: PageRequest,
) -> Result<FileHistory, StorageError> {
    let limit = page.size + 1;
    let (finding_count, fix_count, finding_rows, fix_rows) = with_conn!(conn, c => {
        let finding_count: i64 = count_bounded(
            findings::table
                .filter(findings::file_path.eq(file_path))
                .select(findings::id),
        )
        .get_result(c)?;
        let fix_count: i64 =
            count_bounded(fixes::table.filter(fixes::file_path.eq(file_path)).select(fixes::id))
                .get_result(c)?;

        let mut finding_query = findings::table
            .filter(findings::file_path.eq(file_path))
            .into_boxed();
        let mut fix_query = fixes::table.filter(fixes::file_path.eq(file_path)).into_boxed();
        if let Some(after) = page.after {
            let (finding_id, fix_id) = ids_before(after.id);
            // `created_at <= key` repeats what the second condition implies,
            // as a range that the planner can read from the index.
            finding_query = finding_query.filter(findings::created_at.le(after.key)).filter(
                findings::created_at
                    .lt(after.key)
                    .or(findings::created_at.eq(after.key).and(findings::id.le(finding_id))),
            );
            fix_query = fix_query.filter(fixes::created_at.le(after.key)).filter(
                fixes::created_at
                    .lt(after.key)
                    .or(fixes::created_at.eq(after.key).and(fixes::id.le(fix_id))),
            );
        }
        let finding_rows: Vec<FindingRow> = finding_query
            .order((findings::created_at.desc(), findings::id.desc()))
            .limit(limit)
            .select(FindingRow::as_select())
            .load(c)?;
        let fix_rows: Vec<FixRow> = fix_query
            .order((fixes::created_at.desc(), fixes::id.desc()))
            .limit(limit)
            .select(FixRow::as_select())
            .load(c)?;
        (finding_count, fix_count, finding_rows, fix_rows)
    });

    let mut rows: Vec<Row> = finding_rows
        .into_iter()
        .map(Row::Finding)
        .chain(fix_rows.into_iter().map(Row::Fix))
        .collect();
    rows.sort_by_key(|row| {
        let cursor = row.cursor();
        std::cmp::Reverse((cursor.key, cursor.id))
    });
    let rows = Page::from_rows(rows, page, finding_count + fix_count, Row::cursor);

    let mut crew_output_ids: Vec<i64> = rows.items.iter().map(Row::crew_output_id).collect();
    crew_output_ids.sort_unstable();
    crew_output_ids.dedup();
    let runs: Vec<CrewOutputRow> = with_conn!(conn, c => {
        crew_outputs::table
            .filter(crew_outputs::id.eq_any(&crew_output_ids))
            .select(CrewOutputRow::as_select())
            .load(c)?
    });
    let runs: HashMap<i64, CrewOutputRow> = runs.into_iter().map(|run| (run.id, run)).collect();

    let fix_rows: Vec<FixRow> = rows
        .items
        .iter()
        .filter_map(|row| match row {
            Row::Fix(fix) => Some(fix.clone()),
            Row::Finding(_) => None,
        })
        .collect();
    let mut linked: HashMap<i64, FixWithFindings> = fix_queries::with_findings(conn, fix_rows)?
        .into_iter()
        .map(|fix| (fix.fix.id, fix))
        .collect();

    let mut events = Vec::with_capacity(rows.items.len());
    for row in rows.items {
        let Some(crew_output) = runs.get(&row.crew_output_id()).cloned() else {
            // The run was deleted between the two reads; its rows went with it.
            continue;
        };
        let record = match row {
            Row::Finding(finding) => HistoryRecord::Finding(finding),
            Row::Fix(fix) => match linked.remove(&fix.id) {
                Some(fix) => HistoryRecord::Fix(fix),
                None => continue,
            },
        };
        events.push(HistoryEvent {
            record,
            crew_output,
        });
    }

    Ok(FileHistory {
        page: Page {
            items: events,
            next: rows.next,
            total: rows.total,
        },
        finding_count,
        fix_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_ids_interleave_kinds() {
        // A cursor at fix 3 (sort id 7) continues with finding 3 and fix 2.
        assert_eq!(ids_before(fix_sort_id(3)), (3, 2));
        // A cursor at finding 3 (sort id 6) continues with finding 2 and fix 2.
        assert_eq!(ids_before(finding_sort_id(3)), (2, 2));
        assert_eq!(ids_before(finding_sort_id(1)), (0, 0));
    }
}
