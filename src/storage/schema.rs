//! Diesel table definitions. They match the migrations of both backends,
//! which a test compares column by column.

diesel::table! {
    audit_events (id) {
        id -> BigInt,
        occurred_at -> BigInt,
        actor -> Text,
        action -> Text,
        record_type -> Text,
        record_id -> BigInt,
        before -> Nullable<Text>,
        after -> Nullable<Text>,
        previous_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    crew_outputs (id) {
        id -> BigInt,
        crew_name -> Text,
        output_type -> Text,
        status -> Integer,
        results -> Text,
        error_message -> Text,
        started_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
        revision -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        keep -> Integer,
    }
}

diesel::table! {
    code_analysis_results (id) {
        id -> BigInt,
        crew_output_id -> BigInt,
        file_path -> Text,
        rule_id -> Text,
        message -> Text,
        priority -> Integer,
        status -> Integer,
        status_reason -> Text,
        start_line -> Integer,
        end_line -> Integer,
        start_column -> Integer,
        end_column -> Integer,
        fingerprint -> Text,
        fingerprint_version -> Integer,
        analysis -> Text,
        revision -> BigInt,
        dismiss_reason -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    error_handling_results (id) {
        id -> BigInt,
        crew_output_id -> BigInt,
        file_path -> Text,
        description -> Text,
        changes -> Text,
        status -> Integer,
        revision -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    fix_findings (fix_id, finding_id) {
        fix_id -> BigInt,
        finding_id -> BigInt,
    }
}

diesel::table! {
    log_entries (id) {
        id -> BigInt,
        entry_id -> Nullable<Text>,
        crew_output_id -> Nullable<BigInt>,
        timestamp -> BigInt,
        level -> Text,
        severity_number -> Integer,
        message -> Text,
        crew_name -> Text,
        metadata -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    finding_triage (crew_name, fingerprint) {
        crew_name -> Text,
        fingerprint -> Text,
        status -> Integer,
        reason -> Text,
        finding_id -> BigInt,
        updated_at -> BigInt,
        dismiss_reason -> Integer,
    }
}

diesel::table! {
    tasks (id) {
        id -> BigInt,
        queue -> Text,
        payload -> Text,
        priority -> Integer,
        state -> Integer,
        dedupe_key -> Nullable<Text>,
        attempts -> Integer,
        max_attempts -> Integer,
        retry_backoff_ms -> BigInt,
        run_at -> BigInt,
        worker -> Text,
        lease_token -> Text,
        lease_expires_at -> Nullable<BigInt>,
        last_error -> Text,
        crew_output_id -> Nullable<BigInt>,
        revision -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        leased_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(code_analysis_results -> crew_outputs (crew_output_id));
diesel::joinable!(error_handling_results -> crew_outputs (crew_output_id));
diesel::joinable!(fix_findings -> error_handling_results (fix_id));
diesel::joinable!(fix_findings -> code_analysis_results (finding_id));
diesel::joinable!(log_entries -> crew_outputs (crew_output_id));
diesel::joinable!(tasks -> crew_outputs (crew_output_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_events,
    crew_outputs,
    code_analysis_results,
    error_handling_results,
    finding_triage,
    fix_findings,
    log_entries,
    tasks,
);
