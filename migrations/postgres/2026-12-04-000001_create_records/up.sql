-- Times are UTC microseconds since the Unix epoch, stored as 64-bit integers
-- so that both backends order them the same way.
-- Enumerations are stored as the numbers of the protobuf enums.
-- `revision` counts the changes of a mutable record: every update adds one.

CREATE TABLE crew_outputs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    crew_name TEXT NOT NULL,
    output_type TEXT NOT NULL,
    status INTEGER NOT NULL,
    results TEXT NOT NULL DEFAULT '{}',
    error_message TEXT NOT NULL DEFAULT '',
    started_at BIGINT,
    finished_at BIGINT,
    revision BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX crew_outputs_created_at_idx ON crew_outputs (created_at);
CREATE INDEX crew_outputs_crew_name_idx ON crew_outputs (crew_name, id);

CREATE TABLE code_analysis_results (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    crew_output_id BIGINT NOT NULL REFERENCES crew_outputs (id) ON DELETE CASCADE,
    file_path TEXT NOT NULL,
    rule_id TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL,
    status INTEGER NOT NULL,
    status_reason TEXT NOT NULL DEFAULT '',
    start_line INTEGER NOT NULL DEFAULT 0,
    end_line INTEGER NOT NULL DEFAULT 0,
    start_column INTEGER NOT NULL DEFAULT 0,
    end_column INTEGER NOT NULL DEFAULT 0,
    fingerprint TEXT NOT NULL,
    fingerprint_version INTEGER NOT NULL,
    analysis TEXT NOT NULL DEFAULT '{}',
    revision BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX code_analysis_results_priority_idx ON code_analysis_results (priority);
CREATE INDEX code_analysis_results_crew_output_idx ON code_analysis_results (crew_output_id, id);
CREATE INDEX code_analysis_results_file_path_idx ON code_analysis_results (file_path, id);
CREATE INDEX code_analysis_results_rule_idx ON code_analysis_results (rule_id, id);
CREATE INDEX code_analysis_results_fingerprint_idx ON code_analysis_results (fingerprint);

CREATE TABLE error_handling_results (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    crew_output_id BIGINT NOT NULL REFERENCES crew_outputs (id) ON DELETE CASCADE,
    file_path TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    changes TEXT NOT NULL DEFAULT '{}',
    status INTEGER NOT NULL,
    revision BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX error_handling_results_crew_output_idx ON error_handling_results (crew_output_id, id);
CREATE INDEX error_handling_results_file_path_idx ON error_handling_results (file_path, id);

-- Which findings a fix addresses.
CREATE TABLE fix_findings (
    fix_id BIGINT NOT NULL REFERENCES error_handling_results (id) ON DELETE CASCADE,
    finding_id BIGINT NOT NULL REFERENCES code_analysis_results (id) ON DELETE CASCADE,
    PRIMARY KEY (fix_id, finding_id)
);
CREATE INDEX fix_findings_finding_idx ON fix_findings (finding_id);

CREATE TABLE log_entries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id TEXT,
    crew_output_id BIGINT REFERENCES crew_outputs (id) ON DELETE CASCADE,
    timestamp BIGINT NOT NULL,
    level TEXT NOT NULL,
    severity_number INTEGER NOT NULL,
    message TEXT NOT NULL,
    crew_name TEXT NOT NULL DEFAULT '',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX log_entries_entry_id_idx ON log_entries (entry_id);
CREATE INDEX log_entries_timestamp_idx ON log_entries (timestamp, id);
CREATE INDEX log_entries_severity_idx ON log_entries (severity_number, timestamp);
CREATE INDEX log_entries_crew_name_idx ON log_entries (crew_name, timestamp, id);
CREATE INDEX log_entries_crew_output_idx ON log_entries (crew_output_id, timestamp);
