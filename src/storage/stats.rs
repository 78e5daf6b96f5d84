//! Server-wide counts for `GetStats`.

use diesel::prelude::*;

use super::schema::{
    code_analysis_results, crew_outputs, error_handling_results, log_entries, tasks,
};
use super::{Conn, StorageError, with_conn};

/// Totals and breakdowns; rates are row counts since the given times.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub crew_outputs: i64,
    pub findings: i64,
    pub fixes: i64,
    pub log_entries: i64,
    pub tasks: i64,
    pub findings_by_priority: Vec<(i32, i64)>,
    pub findings_by_status: Vec<(i32, i64)>,
    pub log_entries_by_severity: Vec<(i32, i64)>,
    pub tasks_by_queue_and_state: Vec<(String, i32, i64)>,
    pub log_entries_since_minute: i64,
    pub log_entries_since_hour: i64,
    pub findings_since_minute: i64,
    pub findings_since_hour: i64,
}

/// Counts everything; `minute_ago` and `hour_ago` are UTC microseconds.
pub fn counts(conn: &mut Conn, minute_ago: i64, hour_ago: i64) -> Result<Counts, StorageError> {
    use diesel::dsl::count_star;
    with_conn!(conn, c => {
        Ok(Counts {
            crew_outputs: crew_outputs::table.count().get_result(c)?,
            findings: code_analysis_results::table.count().get_result(c)?,
            fixes: error_handling_results::table.count().get_result(c)?,
            log_entries: log_entries::table.count().get_result(c)?,
            tasks: tasks::table.count().get_result(c)?,
            findings_by_priority: code_analysis_results::table
                .group_by(code_analysis_results::priority)
                .select((code_analysis_results::priority, count_star()))
                .order(code_analysis_results::priority)
                .load(c)?,
            findings_by_status: code_analysis_results::table
                .group_by(code_analysis_results::status)
                .select((code_analysis_results::status, count_star()))
                .order(code_analysis_results::status)
                .load(c)?,
            log_entries_by_severity: log_entries::table
                .group_by(log_entries::severity_number)
                .select((log_entries::severity_number, count_star()))
                .order(log_entries::severity_number)
                .load(c)?,
            tasks_by_queue_and_state: tasks::table
                .group_by((tasks::queue, tasks::state))
                .select((tasks::queue, tasks::state, count_star()))
                .order((tasks::queue, tasks::state))
                .load(c)?,
            log_entries_since_minute: log_entries::table
                .filter(log_entries::created_at.ge(minute_ago))
                .count()
                .get_result(c)?,
            log_entries_since_hour: log_entries::table
                .filter(log_entries::created_at.ge(hour_ago))
                .count()
                .get_result(c)?,
            findings_since_minute: code_analysis_results::table
                .filter(code_analysis_results::created_at.ge(minute_ago))
                .count()
                .get_result(c)?,
            findings_since_hour: code_analysis_results::table
                .filter(code_analysis_results::created_at.ge(hour_ago))
                .count()
                .get_result(c)?,
        })
    })
}
