DROP TRIGGER audit_events_no_truncate ON audit_events;
DROP TRIGGER audit_events_no_delete ON audit_events;
DROP TRIGGER audit_events_no_update ON audit_events;
DROP FUNCTION audit_events_append_only();
