//! Reading the stored trees back from SQL rows, shared by the SQLite and PostgreSQL backends:
//! a value that does not decode is damaged storage ([`TreeError::Corrupt`]), never a panic.

use super::{AuditLog, Hash, TreeError};

impl TreeError {
    /// Any other failure of the storage.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TreeError::Backend(Box::new(e))
    }
}

/// A size or leaf index as an SQL integer.
pub fn sql_int(v: u64) -> Result<i64, TreeError> {
    i64::try_from(v).map_err(TreeError::backend)
}

/// The log named by a stored key.
pub fn stored_log(key: &str) -> Result<AuditLog, TreeError> {
    key.parse().map_err(TreeError::backend)
}

/// A stored size of `log`.
pub fn stored_size(log: AuditLog, v: i64) -> Result<u64, TreeError> {
    u64::try_from(v).map_err(|_| TreeError::Corrupt {
        log,
        detail: format!("a negative size {v}"),
    })
}

/// A stored node of `log`.
pub fn stored_hash(log: AuditLog, bytes: &[u8]) -> Result<Hash, TreeError> {
    Hash::try_from(bytes).map_err(|_| TreeError::Corrupt {
        log,
        detail: format!("a node of {} bytes", bytes.len()),
    })
}

/// The leaves `start..end` of `log` as read: all of them, or the storage lost some.
pub fn all_leaves(log: AuditLog, start: u64, end: u64, hashes: Vec<Hash>) -> Result<Vec<Hash>, TreeError> {
    if u64::try_from(hashes.len()).ok() != end.checked_sub(start) {
        return Err(TreeError::Corrupt {
            log,
            detail: format!("{} leaves stored in {start}..{end}", hashes.len()),
        });
    }
    Ok(hashes)
}
