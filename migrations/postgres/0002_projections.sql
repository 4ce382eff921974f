-- Projections (DESIGN.md §6). Each projection keeps one JSON document per organization and a
-- checkpoint, written in the same transaction as its rows. With several instances on one
-- database, one runner per projection holds a session advisory lock (the lease).
CREATE TABLE projection_checkpoints (
    projection  text   PRIMARY KEY,
    position    bigint NOT NULL
);

CREATE TABLE projection_documents (
    projection  text  NOT NULL,
    org_id      text  NOT NULL,
    doc         jsonb NOT NULL,
    PRIMARY KEY (projection, org_id)
);

-- The tenant-level audit: one row per tenant per key-relevant event.
CREATE TABLE tenant_audit (
    tenant_id   text        NOT NULL,
    position    bigint      NOT NULL,
    org_id      text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    action      text        NOT NULL,
    entry       jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, position)
);

CREATE INDEX tenant_audit_by_action ON tenant_audit (tenant_id, action, position);
