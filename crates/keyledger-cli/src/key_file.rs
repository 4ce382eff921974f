//! The internal key file at start (CONTRACT.md, "Clarifications"): it is created only for a
//! store that holds no sealed data. A store with sealed data and a missing file, or a file
//! holding none of the keys that sealed it, stops `serve`: a fresh ring there would leave
//! every organization unreadable and seal new events under a key nobody backed up.

use std::path::Path;
use std::sync::Arc;

use keyledger_domain::GlobalPosition;
use keyledger_store::{EventStore, KeyRing, KeyRingError, StoreError};

use crate::report::Failure;

/// Events read per page while looking for sealed data.
const PAGE: usize = 1_000;

/// The ring read from `path`, or `None` when the file does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<KeyRing>, Failure> {
    match KeyRing::load(path) {
        Ok(ring) => Ok(Some(ring)),
        Err(KeyRingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failure(path, &e)),
    }
}

/// Holds `ring` (the file's, or a new one when `loaded` is false) against the sealed data of
/// `store`, and writes a new ring to `path` only when the store holds none.
pub(crate) async fn settle(
    path: &Path,
    ring: &Arc<KeyRing>,
    loaded: bool,
    store: &dyn EventStore,
) -> Result<(), Failure> {
    let sealed_by = first_sealing_key(store)
        .await
        .map_err(|e| Failure::new("cannot read the store to check the internal key file", &e))?;
    match (loaded, sealed_by) {
        (false, None) => {
            ring.create_file(path).map_err(|e| failure(path, &e))?;
            tracing::info!(file = %path.display(), "created the internal key file");
            Ok(())
        }
        (false, Some(kid)) => Err(Failure::msg(
            format!("keys.internal_key_file {}", path.display()),
            format!(
                "the file is missing, but the store holds data sealed with internal key {kid}; \
                 restore the file from backup (a new key ring would not open that data)"
            ),
        )),
        (true, Some(kid)) if !ring.kids().contains(&kid.as_str()) => Err(Failure::msg(
            format!("keys.internal_key_file {}", path.display()),
            format!(
                "the file does not hold internal key {kid}, which sealed data in this store; \
                 it belongs to another store, or is an old copy: restore the right file"
            ),
        )),
        (true, _) => Ok(()),
    }
}

/// The key id of the first sealed field in the store, in commit order (`None`: nothing is
/// sealed). Organizations seal their first data key at registration, so this reads a page or
/// two of a store in use and the whole log only when nothing in it is sealed.
async fn first_sealing_key(store: &dyn EventStore) -> Result<Option<String>, StoreError> {
    let mut after = GlobalPosition(0);
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(None) };
        after = last.global_position;
        for stored in &page {
            let mut event = keyledger_store::chain::decode_event(stored)?;
            let mut kid = None;
            event.for_each_protected(|_, slot| {
                if kid.is_none() {
                    kid = slot.sealed_box().map(|b| b.kid.clone());
                }
            });
            if kid.is_some() {
                return Ok(kid);
            }
        }
    }
}

fn failure(path: &Path, e: &KeyRingError) -> Failure {
    Failure::new(format!("keys.internal_key_file {}", path.display()), e)
}
