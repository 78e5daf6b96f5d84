-- The work queue of crews. `state` holds the numbers of the TaskState enum:
-- 1 QUEUED, 2 LEASED, 3 SUCCEEDED, 4 DEAD, 5 CANCELLED.
CREATE TABLE tasks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    priority INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,
    dedupe_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    retry_backoff_ms BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    worker TEXT NOT NULL DEFAULT '',
    lease_token TEXT NOT NULL DEFAULT '',
    lease_expires_at BIGINT,
    last_error TEXT NOT NULL DEFAULT '',
    crew_output_id BIGINT REFERENCES crew_outputs (id) ON DELETE SET NULL,
    revision BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
-- At most one unfinished task per queue and dedupe key.
CREATE UNIQUE INDEX tasks_dedupe_idx ON tasks (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN (1, 2);
-- Claims: ready tasks of a queue by priority, then age.
CREATE INDEX tasks_claim_idx ON tasks (queue, state, priority DESC, id);
CREATE INDEX tasks_state_idx ON tasks (state, id);

-- Ingest rates count the rows stored in the last minute and hour.
CREATE INDEX log_entries_created_at_idx ON log_entries (created_at);
CREATE INDEX code_analysis_results_created_at_idx ON code_analysis_results (created_at);
