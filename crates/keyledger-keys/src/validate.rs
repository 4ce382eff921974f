//! "Test and save" (R4): the live checks a connection must pass before it is recorded.

use chrono::{DateTime, Utc};
use keyledger_domain::{Connection, ValidatedKey};
use serde::Serialize;

use crate::port::{Dek, KeyAccess};
use crate::reason::{KeyAccessError, Reason};

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: u32 = 2048;

/// One check of the connection test, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    /// The key can be read with the connection's credentials.
    ReadKey,
    /// The key is RSA (or RSA-HSM) of at least 2048 bits.
    KeyType,
    /// `enabled` is true.
    Enabled,
    /// `exp` is absent or in the future.
    NotExpired,
    /// `nbf` is absent or in the past.
    NotBefore,
    /// `key_ops` include `wrapKey` and `unwrapKey`.
    KeyOps,
    /// 32 random bytes wrapped then unwrapped come back equal.
    WrapUnwrap,
}

/// A check that ran and whether it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: CheckName,
    pub ok: bool,
}

/// The result of a connection test: every check that ran (they stop at the first failure) and
/// the validated key or the reason of that failure.
#[derive(Debug)]
pub struct ConnectionTest {
    pub checks: Vec<Check>,
    pub outcome: Result<ValidatedKey, KeyAccessError>,
}

impl ConnectionTest {
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Runs the R4 checks against the live key at time `now`. On success the returned
/// [`ValidatedKey`]'s identifier is pinned to the version that was read and used.
pub async fn test_connection<K: KeyAccess + ?Sized>(
    access: &K,
    connection: &Connection,
    now: DateTime<Utc>,
) -> ConnectionTest {
    let mut checks = Vec::new();
    let outcome = run_checks(access, connection, now, &mut checks).await;
    match &outcome {
        Ok(k) => tracing::info!(key = %k.key(), "key connection test passed"),
        Err(e) => {
            tracing::info!(key = %connection.key_identifier, reason = %e.reason, "key connection test failed")
        }
    }
    ConnectionTest { checks, outcome }
}

async fn run_checks<K: KeyAccess + ?Sized>(
    access: &K,
    connection: &Connection,
    now: DateTime<Utc>,
    checks: &mut Vec<Check>,
) -> Result<ValidatedKey, KeyAccessError> {
    fn check(
        checks: &mut Vec<Check>,
        name: CheckName,
        result: Result<(), KeyAccessError>,
    ) -> Result<(), KeyAccessError> {
        checks.push(Check {
            name,
            ok: result.is_ok(),
        });
        result
    }

    let described = access.describe(connection).await.and_then(|key| {
        match connection.key_identifier.version() {
            // The vault answered for another version than the one asked for.
            Some(wanted) if key.key_identifier.version() != Some(wanted) => Err(KeyAccessError::with_detail(
                Reason::KeyNotFound,
                "vault returned another key version",
            )),
            _ => Ok(key),
        }
    });
    checks.push(Check {
        name: CheckName::ReadKey,
        ok: described.is_ok(),
    });
    let key = described?;

    let rsa = matches!(key.kty.as_str(), "RSA" | "RSA-HSM");
    // An RSA key whose size the vault did not reveal is refused rather than guessed.
    let big_enough = key.key_size.is_some_and(|bits| bits >= MIN_RSA_BITS);
    check(
        checks,
        CheckName::KeyType,
        if rsa && big_enough {
            Ok(())
        } else {
            Err(KeyAccessError::with_detail(
                Reason::UnsupportedKey,
                format!("kty {} size {:?}", key.kty, key.key_size),
            ))
        },
    )?;
    check(
        checks,
        CheckName::Enabled,
        if key.enabled {
            Ok(())
        } else {
            Err(KeyAccessError::new(Reason::KeyDisabled))
        },
    )?;
    check(
        checks,
        CheckName::NotExpired,
        match key.expires_at {
            Some(exp) if exp <= now => Err(KeyAccessError::with_detail(
                Reason::KeyExpired,
                format!("exp {exp}"),
            )),
            _ => Ok(()),
        },
    )?;
    check(
        checks,
        CheckName::NotBefore,
        match key.not_before {
            Some(nbf) if nbf > now => Err(KeyAccessError::with_detail(
                Reason::KeyNotYetValid,
                format!("nbf {nbf}"),
            )),
            _ => Ok(()),
        },
    )?;
    let missing: Vec<&str> = ["wrapKey", "unwrapKey"]
        .into_iter()
        .filter(|op| !key.has_op(op))
        .collect();
    check(
        checks,
        CheckName::KeyOps,
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KeyAccessError::with_detail(
                Reason::UnsupportedKey,
                format!("key_ops lack {}", missing.join(", ")),
            ))
        },
    )?;

    // Pin the version that was read, so wrap and unwrap use exactly that key.
    let pinned = Connection {
        key_identifier: key.key_identifier.clone(),
        ..connection.clone()
    };
    let round_trip = async {
        let dek = Dek::generate();
        let wrapped = access.wrap(&pinned, &dek).await?;
        if !wrapped.wrapped_by().is_customer(&key.key_identifier) {
            return Err(KeyAccessError::with_detail(
                Reason::VaultError,
                "wrap used another key version",
            ));
        }
        let back = access.unwrap(&pinned, wrapped.edek()).await?;
        if back != dek {
            return Err(KeyAccessError::with_detail(
                Reason::VaultError,
                "unwrap returned other bytes",
            ));
        }
        Ok(())
    }
    .await;
    check(checks, CheckName::WrapUnwrap, round_trip)?;

    ValidatedKey::attest(pinned, key.properties(), now).map_err(|_| {
        KeyAccessError::with_detail(Reason::VaultError, "vault returned a key id without a version")
    })
}
