//! Carries out the key work that `keyledger_domain::plan` asks for: key tests through the
//! key-access port, DEKs wrapped by the customer key or the internal key ring. It decides
//! nothing; its answers are attested values that `decide` checks.

use chrono::{DateTime, Utc};
use keyledger_domain::{
    Connection, DekId, KeyResults, KeyWork, OrgId, RewrapEvidence, ValidatedKey, WrappedDek,
};
use keyledger_keys::evidence::{unwrap_all, wrap_all};
use keyledger_keys::{Dek, KeyAccess, test_connection};
use keyledger_store::{KeyRing, provider};

use crate::error::{AppError, KeyRole};

/// Where the key work of one command is done.
pub(crate) struct KeyWorker<'a> {
    pub(crate) keys: &'a dyn KeyAccess,
    pub(crate) ring: &'a KeyRing,
    pub(crate) org: OrgId,
    pub(crate) now: DateTime<Utc>,
}

impl KeyWorker<'_> {
    /// Does `work` and answers with its results. A failed key test or vault call ends it.
    pub(crate) async fn run(&self, work: KeyWork) -> Result<KeyResults, AppError> {
        Ok(match work {
            KeyWork::None => KeyResults::None,
            KeyWork::ProviderWrapNew { dek_id } => KeyResults::ProviderWrapped {
                dek: self.provider_wrap(dek_id, &Dek::generate())?,
            },
            KeyWork::Test { connection } => {
                // A dry run has no results for `decide`; `App::test_connection` reports it.
                self.validate(&connection).await?;
                KeyResults::None
            }
            KeyWork::TestAndWrapNew { connection } => {
                let key = self.validate(&connection).await?;
                let dek = self
                    .keys
                    .wrap(key.connection(), &Dek::generate())
                    .await
                    .map_err(|e| AppError::from_key(KeyRole::New, e, vec![]))?;
                KeyResults::TestedAndWrapped { key, dek }
            }
            KeyWork::TestAndRewrap {
                connection,
                from,
                edeks,
            } => {
                let key = self.validate(&connection).await?;
                let rewrap = match key.key().same_key_version(&from.key_identifier) {
                    true => None,
                    false => Some(self.rewrap_to_customer(&from, &edeks, key.connection()).await?),
                };
                KeyResults::TestedAndRewrapped { key, rewrap }
            }
            KeyWork::RewrapToProvider { from, new_dek } => {
                let rewrap = match from {
                    None => None,
                    Some((from, edeks)) => Some(self.rewrap_to_provider(&from, &edeks).await?),
                };
                KeyResults::SwitchedToProvider {
                    rewrap,
                    new_dek: self.provider_wrap(new_dek, &Dek::generate())?,
                }
            }
        })
    }

    /// R4 on `connection`; a failure is about the new key.
    async fn validate(&self, connection: &Connection) -> Result<ValidatedKey, AppError> {
        let test = test_connection(self.keys, connection, self.now).await;
        test.outcome
            .map_err(|e| AppError::from_key(KeyRole::New, e, test.checks))
    }

    /// R7: every DEK under the current key unwraps with it (old key) and is wrapped by the
    /// new one.
    async fn rewrap_to_customer(
        &self,
        from: &Connection,
        edeks: &[(DekId, keyledger_domain::Edek)],
        to: &Connection,
    ) -> Result<RewrapEvidence, AppError> {
        let (proof, clear) = unwrap_all(self.keys, from, edeks)
            .await
            .map_err(|e| AppError::from_key(KeyRole::Old, e, vec![]))?;
        let rewrapped = wrap_all(self.keys, to, &clear)
            .await
            .map_err(|e| AppError::from_key(KeyRole::New, e, vec![]))?;
        Ok(RewrapEvidence {
            unwrapped: proof,
            rewrapped,
        })
    }

    /// R9: every DEK under the current key unwraps with it and is wrapped by the internal key.
    async fn rewrap_to_provider(
        &self,
        from: &Connection,
        edeks: &[(DekId, keyledger_domain::Edek)],
    ) -> Result<RewrapEvidence, AppError> {
        let (proof, clear) = unwrap_all(self.keys, from, edeks)
            .await
            .map_err(|e| AppError::from_key(KeyRole::Old, e, vec![]))?;
        let mut rewrapped = Vec::with_capacity(clear.len());
        for (id, dek) in &clear {
            rewrapped.push((*id, self.provider_wrap(*id, dek)?));
        }
        Ok(RewrapEvidence {
            unwrapped: proof,
            rewrapped,
        })
    }

    fn provider_wrap(&self, dek_id: DekId, dek: &Dek) -> Result<WrappedDek, AppError> {
        provider::wrap_dek(self.ring, self.org, dek_id, dek.expose()).map_err(|e| {
            tracing::error!(error = %e, "wrapping a DEK with the internal key failed");
            AppError::Internal("wrapping a DEK with the internal key failed")
        })
    }
}
