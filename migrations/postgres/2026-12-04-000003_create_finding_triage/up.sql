-- The latest triage state of each finding identity (fingerprint) of a crew:
-- a person's decision, or FIXED and REOPENED as later runs report it.
-- New findings of the crew with the same fingerprint start from it.
CREATE TABLE finding_triage (
    crew_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    finding_id BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (crew_name, fingerprint)
);

-- Run comparison reads the previous finished run of a crew.
CREATE INDEX crew_outputs_crew_status_idx ON crew_outputs (crew_name, status, id);
