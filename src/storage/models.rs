//! Rows as Diesel reads and writes them. Times are UTC microseconds, JSON
//! columns hold serialized JSON text, and status and priority columns hold
//! the numbers of the protobuf enums.
//!
//! Every insertable row binds `None` as NULL rather than leaving the column
//! to its default (`treat_none_as_default_value = false`), and no nullable
//! column has a default. A single-row insert then has one SQL text, which
//! Diesel prepares once per connection and reuses. On SQLite, a slice of
//! rows becomes one multi-row statement instead of a statement per row.

use diesel::prelude::*;

use super::schema::{
    audit_events, code_analysis_results, crew_outputs, error_handling_results, fix_findings,
    log_entries, tasks,
};

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = crew_outputs)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct CrewOutputRow {
    pub id: i64,
    pub crew_name: String,
    pub output_type: String,
    pub status: i32,
    pub results: String,
    pub error_message: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// 1 when retention must never delete the run, 0 otherwise.
    pub keep: i32,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = crew_outputs, treat_none_as_default_value = false)]
pub struct NewCrewOutputRow {
    pub crew_name: String,
    pub output_type: String,
    pub status: i32,
    pub results: String,
    pub error_message: String,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub keep: i32,
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = code_analysis_results)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct FindingRow {
    pub id: i64,
    pub crew_output_id: i64,
    pub file_path: String,
    pub rule_id: String,
    pub message: String,
    pub priority: i32,
    pub status: i32,
    pub status_reason: String,
    pub start_line: i32,
    pub end_line: i32,
    pub start_column: i32,
    pub end_column: i32,
    pub fingerprint: String,
    pub fingerprint_version: i32,
    pub analysis: String,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub dismiss_reason: i32,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = code_analysis_results, treat_none_as_default_value = false)]
pub struct NewFindingRow {
    pub crew_output_id: i64,
    pub file_path: String,
    pub rule_id: String,
    pub message: String,
    pub priority: i32,
    pub status: i32,
    pub status_reason: String,
    pub start_line: i32,
    pub end_line: i32,
    pub start_column: i32,
    pub end_column: i32,
    pub fingerprint: String,
    pub fingerprint_version: i32,
    pub analysis: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub dismiss_reason: i32,
}

#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = error_handling_results)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct FixRow {
    pub id: i64,
    pub crew_output_id: i64,
    pub file_path: String,
    pub description: String,
    pub changes: String,
    pub status: i32,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A fix with the ids of the findings it addresses.
#[derive(Debug, Clone)]
pub struct FixWithFindings {
    pub fix: FixRow,
    pub finding_ids: Vec<i64>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = error_handling_results, treat_none_as_default_value = false)]
pub struct NewFixRow {
    pub crew_output_id: i64,
    pub file_path: String,
    pub description: String,
    pub changes: String,
    pub status: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = fix_findings, treat_none_as_default_value = false)]
pub struct FixFindingRow {
    pub fix_id: i64,
    pub finding_id: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = log_entries)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct LogEntryRow {
    pub id: i64,
    pub entry_id: Option<String>,
    pub crew_output_id: Option<i64>,
    pub timestamp: i64,
    pub level: String,
    pub severity_number: i32,
    pub message: String,
    pub crew_name: String,
    pub metadata: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = log_entries, treat_none_as_default_value = false)]
pub struct NewLogEntryRow {
    pub entry_id: Option<String>,
    pub crew_output_id: Option<i64>,
    pub timestamp: i64,
    pub level: String,
    pub severity_number: i32,
    pub message: String,
    pub crew_name: String,
    pub metadata: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize)]
#[diesel(table_name = tasks)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct TaskRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub priority: i32,
    pub state: i32,
    pub dedupe_key: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
    pub run_at: i64,
    pub worker: String,
    pub lease_token: String,
    pub lease_expires_at: Option<i64>,
    pub last_error: String,
    pub crew_output_id: Option<i64>,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub leased_at: Option<i64>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = tasks, treat_none_as_default_value = false)]
pub struct NewTaskRow {
    pub queue: String,
    pub payload: String,
    pub priority: i32,
    pub state: i32,
    pub dedupe_key: Option<String>,
    pub max_attempts: i32,
    pub retry_backoff_ms: i64,
    pub run_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct AuditEventRow {
    pub id: i64,
    pub occurred_at: i64,
    pub actor: String,
    pub action: String,
    pub record_type: String,
    pub record_id: i64,
    pub before: Option<String>,
    pub after: Option<String>,
    pub previous_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_events, treat_none_as_default_value = false)]
pub struct NewAuditEventRow {
    pub occurred_at: i64,
    pub actor: String,
    pub action: String,
    pub record_type: String,
    pub record_id: i64,
    pub before: Option<String>,
    pub after: Option<String>,
    pub previous_hash: String,
    pub hash: String,
}
