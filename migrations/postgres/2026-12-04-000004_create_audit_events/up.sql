-- Append-only audit trail. Each event stores the hash of the one before
-- it (`previous_hash`, empty for the first) and its own `hash`, the SHA-256
-- of the previous hash and its fields, so changing or removing an event
-- breaks the chain from there on.
CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    record_type TEXT NOT NULL,
    record_id BIGINT NOT NULL,
    before TEXT,
    after TEXT,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_record_idx ON audit_events (record_type, record_id, id);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
