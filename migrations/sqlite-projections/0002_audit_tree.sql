-- The audit log's Merkle trees (ADR 0024, "Decision: the tree storage"), folded like a
-- projection (`audit_tree` in projection_checkpoints, written in the same transaction).
-- `log` is `global` or `org/<org_id>`. A node is the hash of the complete subtree of 2^level
-- leaves starting at leaf idx << level; level 0 holds the leaf hashes. Nodes never change once
-- written. A head holds the log's size and its frontier: the hashes of its complete subtrees
-- along the right edge, largest first, concatenated (what the next append needs).
CREATE TABLE audit_tree_heads (
    log      TEXT    PRIMARY KEY,
    size     INTEGER NOT NULL,
    frontier BLOB    NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_tree_nodes (
    log   TEXT    NOT NULL,
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (log, level, idx)
) WITHOUT ROWID;
