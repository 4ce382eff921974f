-- Projections (DESIGN.md §6, ADR 0021) in their own SQLite file beside the event log
-- (`<log>-projections`), so that their commits never wait for the log's one writer. Each
-- projection keeps one JSON document per organization and a checkpoint, written in the same
-- transaction as its rows.
CREATE TABLE projection_checkpoints (
    projection  TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE projection_documents (
    projection  TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (projection, org_id)
) WITHOUT ROWID;

-- The tenant-level audit: one row per tenant per key-relevant event.
CREATE TABLE tenant_audit (
    tenant_id   TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    org_id      TEXT    NOT NULL,
    occurred_at TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    entry       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, position)
) WITHOUT ROWID;

CREATE INDEX tenant_audit_by_action ON tenant_audit (tenant_id, action, position);
