//! Crews as a whole: the distinct crew names of `crew_outputs`, and each
//! crew's state and metrics over a time window.

use diesel::prelude::*;

use super::models::CrewOutputRow;
use super::schema::{code_analysis_results, crew_outputs};
use super::{Conn, StorageError, with_conn};
use crate::pb::CrewOutputStatus;

/// Input of the metrics of one crew.
#[derive(Debug, Clone)]
pub struct CrewRuns {
    pub crew_name: String,
    pub last_run: CrewOutputRow,
    pub runs_in_progress: i64,
    /// `(status, started_at, finished_at)` of each run created in the window.
    pub window_runs: Vec<(i32, Option<i64>, Option<i64>)>,
    /// Findings of the runs created in the window.
    pub window_findings: i64,
}

/// Returns one page of crew names in ascending order after `after`, at most
/// `limit` of them, and the number of crew names in all.
pub fn names(
    conn: &mut Conn,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<String>, i64), StorageError> {
    with_conn!(conn, c => {
        let total: i64 = crew_outputs::table
            .select(diesel::dsl::sql::<diesel::sql_types::BigInt>("count(DISTINCT crew_name)"))
            .get_result(c)?;
        let mut query = crew_outputs::table
            .select(crew_outputs::crew_name)
            .distinct()
            .order(crew_outputs::crew_name)
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(crew_outputs::crew_name.gt(after));
        }
        Ok((query.load(c)?, total))
    })
}

/// Reads what the metrics of one crew need; `None` if it has no runs.
pub fn runs(
    conn: &mut Conn,
    crew_name: &str,
    window_start: i64,
) -> Result<Option<CrewRuns>, StorageError> {
    let in_progress = [
        CrewOutputStatus::Pending as i32,
        CrewOutputStatus::Running as i32,
    ];
    with_conn!(conn, c => {
        let last_run: Option<CrewOutputRow> = crew_outputs::table
            .filter(crew_outputs::crew_name.eq(crew_name))
            .order(crew_outputs::id.desc())
            .select(CrewOutputRow::as_select())
            .first(c)
            .optional()?;
        let Some(last_run) = last_run else {
            return Ok(None);
        };
        let runs_in_progress: i64 = crew_outputs::table
            .filter(crew_outputs::crew_name.eq(crew_name))
            .filter(crew_outputs::status.eq_any(in_progress))
            .count()
            .get_result(c)?;
        let window_runs = crew_outputs::table
            .filter(crew_outputs::crew_name.eq(crew_name))
            .filter(crew_outputs::created_at.ge(window_start))
            .select((crew_outputs::status, crew_outputs::started_at, crew_outputs::finished_at))
            .load(c)?;
        let window_findings: i64 = code_analysis_results::table
            .inner_join(crew_outputs::table)
            .filter(crew_outputs::crew_name.eq(crew_name))
            .filter(crew_outputs::created_at.ge(window_start))
            .count()
            .get_result(c)?;
        Ok(Some(CrewRuns {
            crew_name: crew_name.to_string(),
            last_run,
            runs_in_progress,
            window_runs,
            window_findings,
        }))
    })
}
