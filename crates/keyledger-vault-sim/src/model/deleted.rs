//! Soft delete with retention: deleted keys, recover and purge.

use serde_json::{Value, json};

use super::keys::{KeyEntry, name_id};
use super::{AkvError, Vault};

#[derive(Clone)]
pub(super) struct DeletedEntry {
    pub(super) entry: KeyEntry,
    pub(super) deleted: i64,
    pub(super) scheduled_purge: i64,
    pub(super) settling: u32,
}

impl Vault {
    /// Soft delete: the key moves to deleted keys for the retention period.
    pub fn delete_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let now = self.clock.unix();
        let mut s = self.lock();
        let id = name_id(name);
        let entry = s.keys.remove(&id).ok_or_else(|| AkvError::key_not_found(name))?;
        let deleted = DeletedEntry {
            entry,
            deleted: now,
            scheduled_purge: now + i64::from(self.config.retention_days) * 86_400,
            settling: self.config.deletion_settle_requests,
        };
        let body = self.deleted_bundle(base, &deleted);
        s.deleted.insert(id, deleted);
        Ok(body)
    }

    /// `GET deletedkeys/{name}`.
    pub fn deleted_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let s = self.lock();
        let d = s
            .deleted
            .get(&name_id(name))
            .ok_or_else(|| deleted_not_found(name))?;
        Ok(self.deleted_bundle(base, d))
    }

    /// `POST deletedkeys/{name}/recover`: the key is back with every version.
    pub fn recover_key(&self, base: &str, name: &str) -> Result<Value, AkvError> {
        let mut s = self.lock();
        let id = name_id(name);
        let d = s.deleted.get_mut(&id).ok_or_else(|| deleted_not_found(name))?;
        if d.settling > 0 {
            d.settling -= 1;
            return Err(being_deleted());
        }
        let Some(d) = s.deleted.remove(&id) else {
            unreachable!("checked above under the same lock");
        };
        let body = self.current_bundle(base, &d.entry);
        s.keys.insert(id, d.entry);
        Ok(body)
    }

    /// `DELETE deletedkeys/{name}`: gone for good.
    pub fn purge_key(&self, name: &str) -> Result<(), AkvError> {
        let mut s = self.lock();
        let id = name_id(name);
        let d = s.deleted.get_mut(&id).ok_or_else(|| deleted_not_found(name))?;
        if d.settling > 0 {
            d.settling -= 1;
            return Err(being_deleted());
        }
        s.deleted.remove(&id);
        Ok(())
    }

    fn deleted_bundle(&self, base: &str, d: &DeletedEntry) -> Value {
        let mut body = self.current_bundle(base, &d.entry);
        body["recoveryId"] = json!(format!("{base}/deletedkeys/{}", d.entry.name));
        body["deletedDate"] = json!(d.deleted);
        body["scheduledPurgeDate"] = json!(d.scheduled_purge);
        body
    }
}

pub(super) fn deleted_conflict(name: &str) -> AkvError {
    AkvError::conflict(
        "ObjectIsDeletedButRecoverable",
        format!(
            "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
        ),
    )
}

fn deleted_not_found(name: &str) -> AkvError {
    AkvError::new(404, "KeyNotFound", format!("Deleted Key not found: {name}"))
}

fn being_deleted() -> AkvError {
    AkvError::conflict("ObjectIsBeingDeleted", "Key is currently being deleted.")
}
