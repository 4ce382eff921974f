-- Commit notifications (ADR 0022): every statement that inserts events notifies channel
-- `keyledger_events` (delivered at commit, one per transaction after de-duplication), so each
-- keyledger instance's shared tail reads another instance's commits without polling.
CREATE FUNCTION keyledger_events_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyledger_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_committed
    AFTER INSERT ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION keyledger_events_committed();
