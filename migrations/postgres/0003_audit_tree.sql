-- The audit log's Merkle trees (ADR 0024, "Decision: the tree storage"), folded like a
-- projection (`audit_tree` in projection_checkpoints, written in the same transaction, under
-- the projection's lease). `log` is `global` or `org/<org_id>`. A node is the hash of the
-- complete subtree of 2^level leaves starting at leaf idx << level; level 0 holds the leaf
-- hashes. Nodes never change once written. A head holds the log's size and its frontier: the
-- hashes of its complete subtrees along the right edge, largest first, concatenated.
CREATE TABLE audit_tree_heads (
    log      text   PRIMARY KEY,
    size     bigint NOT NULL,
    frontier bytea  NOT NULL
);

CREATE TABLE audit_tree_nodes (
    log   text     NOT NULL,
    level smallint NOT NULL,
    idx   bigint   NOT NULL,
    hash  bytea    NOT NULL,
    PRIMARY KEY (log, level, idx)
);
