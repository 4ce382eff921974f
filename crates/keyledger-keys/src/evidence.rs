//! Evidence for the rules that re-wrap DEKs (R7 rotation, R9 switch): every DEK under a key
//! unwraps with it, and each is wrapped again. Only this crate can attest that.

use std::collections::BTreeSet;

use keyledger_domain::{Connection, DekId, Edek, UnwrapProof, WrappedDek};

use crate::port::{Dek, KeyAccess};
use crate::reason::KeyAccessError;

/// DEKs in clear, with their ids. Zeroed on drop (each [`Dek`] is).
pub type ClearDeks = Vec<(DekId, Dek)>;

/// Unwraps every EDEK with `connection` (whose identifier pins the key version that wrapped
/// them). Stops at the first failure.
pub async fn unwrap_all<K: KeyAccess + ?Sized>(
    access: &K,
    connection: &Connection,
    edeks: &[(DekId, Edek)],
) -> Result<(UnwrapProof, ClearDeks), KeyAccessError> {
    let mut clear = Vec::with_capacity(edeks.len());
    for (id, edek) in edeks {
        clear.push((*id, access.unwrap(connection, edek).await?));
    }
    let ids: BTreeSet<DekId> = clear.iter().map(|(id, _)| *id).collect();
    Ok((UnwrapProof::attest(connection.key_identifier.clone(), ids), clear))
}

/// Wraps every DEK with `connection`'s key.
pub async fn wrap_all<K: KeyAccess + ?Sized>(
    access: &K,
    connection: &Connection,
    deks: &ClearDeks,
) -> Result<Vec<(DekId, WrappedDek)>, KeyAccessError> {
    let mut out = Vec::with_capacity(deks.len());
    for (id, dek) in deks {
        out.push((*id, access.wrap(connection, dek).await?));
    }
    Ok(out)
}
