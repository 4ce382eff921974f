-- The event store (DESIGN.md §3, §5). One row per event; the global position is the rowid,
-- assigned by the single writer in commit order, so catch-up readers never skip an event.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    event_id        TEXT    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    -- RFC 3339 UTC with microseconds, exactly as hashed.
    occurred_at     TEXT    NOT NULL,
    -- The envelope actor as JSON.
    actor           TEXT    NOT NULL,
    command_id      TEXT,
    correlation_id  TEXT,
    causation_id    TEXT,
    -- The payload JSON with protected fields sealed.
    payload         TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- Idempotency: the first result of each command id.
CREATE TABLE commands (
    command_id      TEXT    PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    first_version   INTEGER NOT NULL,
    last_version    INTEGER NOT NULL,
    first_position  INTEGER NOT NULL,
    last_position   INTEGER NOT NULL
) WITHOUT ROWID;
