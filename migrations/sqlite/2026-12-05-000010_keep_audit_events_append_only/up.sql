-- Audit events are append-only: the database refuses to change or delete
-- one. Someone who can drop these triggers can still change events, and
-- VerifyAuditTrail then finds the broken link.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
