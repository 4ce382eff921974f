-- The event store (DESIGN.md §3, §5). See docs/adr/0005-postgres-global-order.md.
--
-- The global position embeds the writing transaction's id: position = xid * 65536 + index of
-- the event in its append (1-based). Ordering by position is ordering by (xid, index), and a
-- catch-up reader only reads positions below pg_snapshot_xmin(pg_current_snapshot()) * 65536:
-- every transaction that could still commit has an xid at or above that fence, so no event can
-- ever appear behind a reader's checkpoint.
CREATE TABLE events (
    position        bigint  PRIMARY KEY,
    xid             xid8    NOT NULL DEFAULT pg_current_xact_id(),
    event_id        text    NOT NULL UNIQUE,
    stream_id       text    NOT NULL,
    stream_version  bigint  NOT NULL CHECK (stream_version >= 1),
    event_type      text    NOT NULL,
    schema_version  integer NOT NULL,
    -- RFC 3339 UTC with microseconds, exactly as hashed.
    occurred_at     text    NOT NULL,
    -- The envelope actor as JSON.
    actor           text    NOT NULL,
    command_id      text,
    correlation_id  text,
    causation_id    text,
    -- The payload JSON with protected fields sealed, byte for byte as hashed.
    payload         text    NOT NULL,
    prev_hash       text    NOT NULL,
    hash            text    NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- Idempotency: the first result of each command id.
CREATE TABLE commands (
    command_id      text    PRIMARY KEY,
    stream_id       text    NOT NULL,
    first_version   bigint  NOT NULL,
    last_version    bigint  NOT NULL,
    first_position  bigint  NOT NULL,
    last_position   bigint  NOT NULL
);
