-- The pgbench baseline table: the shape of the event row, with a plain bigserial position.
CREATE TABLE IF NOT EXISTS pgbench_events (
    position        bigserial PRIMARY KEY,
    xid             xid8    NOT NULL DEFAULT pg_current_xact_id(),
    event_id        text    NOT NULL UNIQUE,
    stream_id       text    NOT NULL,
    stream_version  bigint  NOT NULL,
    event_type      text    NOT NULL,
    schema_version  integer NOT NULL,
    occurred_at     text    NOT NULL,
    actor           text    NOT NULL,
    command_id      text,
    correlation_id  text,
    causation_id    text,
    payload         text    NOT NULL,
    prev_hash       text    NOT NULL,
    hash            text    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
