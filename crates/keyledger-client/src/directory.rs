//! The key directory: what a client knows about each organization's keys, folded from the
//! CloudEvents of the event stream (their public payloads).
//!
//! The fold follows the domain's `evolve` for the fields a client needs: the mode, the active
//! DEK, the key identifier, the lock, the key health and the data-loss declaration. Every
//! other event type (including types this build does not know, such as
//! `keyledger.DataKeyReleased.v1`) and every event of `keyledger/audit` is ignored, so a newer
//! server does not stop an older client.
//!
//! [`KeyDirectory::apply`] says whether the event calls for evicting the organization's cached
//! DEKs ([`Eviction`]): a health change into the revoked class, a switch to the
//! provider-managed key, an enable, a rotation, a connection edit that changes the key, a
//! lock, a data-loss declaration, and (to stay on the safe side) a known key event whose
//! payload this build cannot read.

use std::collections::{BTreeMap, BTreeSet};

use keyledger_domain::{DekId, HealthStatus, OrgId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `source` prefix of an organization's events.
const ORG_SOURCE: &str = "keyledger/organizations/";

/// Who wraps an organization's DEKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The provider's internal key.
    ProviderManaged,
    /// The customer's key in their vault.
    CustomerManaged,
}

/// What the directory knows about one organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgKeys {
    pub mode: Mode,
    /// The DEK new data is sealed under. `None` until a `DataKeyGenerated` is seen (a client
    /// that joined the stream late learns it from its first `active` release).
    pub active_dek: Option<DekId>,
    /// The customer key in use (customer-managed only), as the stream names it.
    pub key_identifier: Option<String>,
    /// R8: the plan was downgraded while the customer key was on.
    pub locked: bool,
    /// The customer key's health (customer-managed only).
    pub health: Option<HealthStatus>,
    /// A data-loss declaration was made for the current customer key (ends with the switch
    /// that abandons it, as in the domain).
    pub data_lost: bool,
    /// Every DEK ever declared lost: they never open again.
    pub lost_dek_ids: BTreeSet<DekId>,
}

impl OrgKeys {
    fn provider_managed() -> Self {
        Self {
            mode: Mode::ProviderManaged,
            active_dek: None,
            key_identifier: None,
            locked: false,
            health: None,
            data_lost: false,
            lost_dek_ids: BTreeSet::new(),
        }
    }

    /// The revoked class ([`HealthStatus::is_revoked`]) while the customer key is in use: no
    /// DEK is released, and the client fails fast.
    pub fn is_revoked(&self) -> bool {
        self.mode == Mode::CustomerManaged && self.health.is_some_and(|h| h.is_revoked())
    }

    /// The revoked health status, when [`OrgKeys::is_revoked`].
    pub fn revoked_status(&self) -> Option<HealthStatus> {
        self.is_revoked().then_some(self.health).flatten()
    }
}

/// Why an organization's cached DEKs were evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Eviction {
    /// The key health moved into the revoked class.
    Revoked(HealthStatus),
    /// The organization switched back to the provider-managed key.
    SwitchedToProviderManaged,
    /// A customer-managed key was enabled.
    Enabled,
    /// The customer key was rotated.
    Rotated,
    /// A connection edit changed the key identifier.
    KeyChanged,
    /// The customer-managed key was locked (plan downgrade).
    Locked,
    /// Customer data was declared lost.
    DataLost,
    /// A known key event whose payload this build could not read: evicted to be safe.
    Unreadable,
}

/// What applying one CloudEvent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Not an organization event this directory folds (audit checkpoints, releases, unknown
    /// types): nothing changed.
    Ignored,
    /// The organization's entry changed (or stayed the same); `eviction` says whether its
    /// cached DEKs must go.
    Org { org: OrgId, eviction: Option<Eviction> },
}

/// One CloudEvent as the stream carries it: only the fields the directory reads.
#[derive(Debug, Clone, Deserialize)]
pub struct CloudEvent {
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub sequence: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl CloudEvent {
    /// The organization of an organization event, from `source` (`None` for `keyledger/audit`
    /// and any other source).
    pub fn org(&self) -> Option<OrgId> {
        self.source.strip_prefix(ORG_SOURCE)?.parse().ok()
    }

    /// `(name, version)` of a `keyledger.<Name>.v<N>` type.
    pub fn type_name(&self) -> Option<(&str, u32)> {
        let rest = self.event_type.strip_prefix("keyledger.")?;
        let (name, version) = rest.rsplit_once(".v")?;
        Some((name, version.parse().ok()?))
    }
}

/// Every organization's keys, folded from the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    orgs: BTreeMap<OrgId, OrgKeys>,
}

impl KeyDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn org(&self, org: OrgId) -> Option<&OrgKeys> {
        self.orgs.get(&org)
    }

    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Folds one CloudEvent. Never fails: what it cannot use it ignores, and a key event it
    /// cannot read evicts ([`Eviction::Unreadable`]).
    pub fn apply(&mut self, event: &CloudEvent) -> Applied {
        let Some(org) = event.org() else {
            return Applied::Ignored;
        };
        let Some((name, _version)) = event.type_name() else {
            return Applied::Ignored;
        };
        if !FOLDED.contains(&name) {
            return Applied::Ignored;
        }
        let entry = self.orgs.entry(org).or_insert_with(OrgKeys::provider_managed);
        let eviction = match fold(entry, name, &event.data) {
            Ok(eviction) => eviction,
            Err(()) => {
                tracing::warn!(%org, event_type = %event.event_type,
                    "a key event's payload could not be read; the organization's DEKs are evicted");
                Some(Eviction::Unreadable)
            }
        };
        Applied::Org { org, eviction }
    }
}

/// The event types the directory folds.
const FOLDED: &[&str] = &[
    "OrganizationRegistered",
    "CustomerManagedKeyLocked",
    "CustomerManagedKeyUnlocked",
    "CustomerManagedKeyEnabled",
    "CustomerManagedKeyConnectionEdited",
    "CustomerManagedKeyRotated",
    "SwitchedToProviderManagedKey",
    "DataKeyGenerated",
    "KeyHealthChanged",
    "CustomerDataDeclaredLost",
];

fn string_at<'a>(data: &'a Value, path: &[&str]) -> Result<&'a str, ()> {
    let mut v = data;
    for p in path {
        v = v.get(p).ok_or(())?;
    }
    v.as_str().ok_or(())
}

fn dek_at(data: &Value, field: &str) -> Result<DekId, ()> {
    let n = data.get(field).and_then(Value::as_u64).ok_or(())?;
    u32::try_from(n).map(DekId).map_err(|_| ())
}

fn fold(org: &mut OrgKeys, name: &str, data: &Value) -> Result<Option<Eviction>, ()> {
    Ok(match name {
        "OrganizationRegistered" => {
            *org = OrgKeys::provider_managed();
            None
        }
        "DataKeyGenerated" => {
            org.active_dek = Some(dek_at(data, "dek_id")?);
            None
        }
        "CustomerManagedKeyEnabled" => {
            let key = string_at(data, &["connection", "key_identifier"])?;
            org.mode = Mode::CustomerManaged;
            org.key_identifier = Some(key.to_owned());
            org.locked = false;
            org.data_lost = false;
            org.health = Some(HealthStatus::Healthy);
            Some(Eviction::Enabled)
        }
        "CustomerManagedKeyConnectionEdited" => {
            let key = string_at(data, &["connection", "key_identifier"])?;
            if org.key_identifier.as_deref() == Some(key) {
                None
            } else {
                org.key_identifier = Some(key.to_owned());
                Some(Eviction::KeyChanged)
            }
        }
        "CustomerManagedKeyRotated" => {
            let key = string_at(data, &["to_key"])?;
            org.key_identifier = Some(key.to_owned());
            // As in `evolve`: the new key passed the live test just now.
            if org.mode == Mode::CustomerManaged {
                org.health = Some(HealthStatus::Healthy);
            }
            Some(Eviction::Rotated)
        }
        "SwitchedToProviderManagedKey" => {
            org.mode = Mode::ProviderManaged;
            org.key_identifier = None;
            org.locked = false;
            org.health = None;
            org.data_lost = false;
            Some(Eviction::SwitchedToProviderManaged)
        }
        "CustomerManagedKeyLocked" => {
            if org.mode == Mode::CustomerManaged {
                org.locked = true;
            }
            Some(Eviction::Locked)
        }
        "CustomerManagedKeyUnlocked" => {
            org.locked = false;
            None
        }
        "KeyHealthChanged" => {
            let to = data.get("to").cloned().ok_or(())?;
            let to: HealthStatus = serde_json::from_value(to).map_err(|_| ())?;
            if org.mode == Mode::CustomerManaged {
                org.health = Some(to);
            }
            to.is_revoked().then_some(Eviction::Revoked(to))
        }
        "CustomerDataDeclaredLost" => {
            let ids = data.get("lost_dek_ids").and_then(Value::as_array).ok_or(())?;
            for id in ids {
                let n = id.as_u64().ok_or(())?;
                org.lost_dek_ids.insert(DekId(u32::try_from(n).map_err(|_| ())?));
            }
            if org.mode == Mode::CustomerManaged {
                org.data_lost = true;
            }
            Some(Eviction::DataLost)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::testing::{self, History};
    use keyledger_domain::{Event, Plan};
    use serde_json::json;

    /// The CloudEvent the server would send for `event` of organization `org` (the public
    /// payload of a real domain event, framed as in `keyledger-server`'s `cloudevent.rs`).
    fn cloud_event(org: OrgId, position: u64, event: &Event) -> CloudEvent {
        let value = json!({
            "specversion": "1.0",
            "id": "0193a1b2-0000-7000-8000-000000000001",
            "source": format!("keyledger/organizations/{org}"),
            "type": format!("keyledger.{}.v{}", event.event_type(), event.schema_version()),
            "subject": org.to_string(),
            "time": "2026-01-01T00:00:00Z",
            "datacontenttype": "application/json",
            "sequence": position.to_string(),
            "data": event.public_payload(),
        });
        serde_json::from_value(value).unwrap()
    }

    fn fold_history(events: &[Event]) -> (KeyDirectory, Vec<Option<Eviction>>) {
        let mut dir = KeyDirectory::new();
        let mut evictions = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let ce = cloud_event(testing::org_id(), u64::try_from(i).unwrap() + 1, e);
            match dir.apply(&ce) {
                Applied::Org { org, eviction } => {
                    assert_eq!(org, testing::org_id());
                    evictions.push(eviction);
                }
                Applied::Ignored => evictions.push(None),
            }
        }
        (dir, evictions)
    }

    #[test]
    fn registration_is_provider_managed_with_dek_1_active() {
        let events = History::new().register(Plan::enterprise("standard")).events();
        let (dir, evictions) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert_eq!(org.mode, Mode::ProviderManaged);
        assert_eq!(org.active_dek, Some(DekId(1)));
        assert!(!org.is_revoked());
        assert!(evictions.iter().all(Option::is_none));
    }

    #[test]
    fn enable_is_customer_managed_with_a_new_active_dek_and_evicts() {
        let events = testing::cmk_org().events();
        let (dir, evictions) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert_eq!(org.mode, Mode::CustomerManaged);
        assert_eq!(org.active_dek, Some(DekId(2)));
        assert_eq!(
            org.key_identifier.as_deref(),
            Some(testing::key_a().to_string().as_str())
        );
        assert_eq!(org.health, Some(HealthStatus::Healthy));
        assert!(evictions.contains(&Some(Eviction::Enabled)));
    }

    #[test]
    fn a_health_change_into_the_revoked_class_evicts_and_out_of_it_does_not() {
        let events = testing::cmk_org()
            .health(HealthStatus::KeyDisabled)
            .health(HealthStatus::Healthy)
            .events();
        let n = events.len();
        let (dir, evictions) = fold_history(&events[..n - 1]);
        assert!(dir.org(testing::org_id()).unwrap().is_revoked());
        assert_eq!(
            evictions[n - 2],
            Some(Eviction::Revoked(HealthStatus::KeyDisabled))
        );
        let (dir, evictions) = fold_history(&events);
        assert!(!dir.org(testing::org_id()).unwrap().is_revoked());
        assert_eq!(evictions[n - 1], None);
    }

    #[test]
    fn every_revoked_status_evicts_and_no_other_does() {
        for status in [
            HealthStatus::KeyExpired,
            HealthStatus::KeyNearExpiry,
            HealthStatus::CredentialsInvalid,
            HealthStatus::CredentialsExpired,
            HealthStatus::PermissionDenied,
            HealthStatus::KeyDisabled,
            HealthStatus::KeyNotFound,
            HealthStatus::VaultUnreachable,
        ] {
            let events = testing::cmk_org().health(status).events();
            let (dir, evictions) = fold_history(&events);
            let expected = status.is_revoked().then_some(Eviction::Revoked(status));
            assert_eq!(*evictions.last().unwrap(), expected, "{status}");
            assert_eq!(
                dir.org(testing::org_id()).unwrap().is_revoked(),
                status.is_revoked()
            );
        }
    }

    #[test]
    fn rotation_evicts_changes_the_key_and_keeps_the_active_dek() {
        let events = testing::cmk_org().rotate(&testing::key_b()).events();
        let (dir, evictions) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert_eq!(
            org.key_identifier.as_deref(),
            Some(testing::key_b().to_string().as_str())
        );
        assert_eq!(org.active_dek, Some(DekId(2)));
        assert!(evictions.contains(&Some(Eviction::Rotated)));
    }

    #[test]
    fn a_secret_edit_keeps_the_cache_and_a_key_change_evicts() {
        let events = testing::cmk_org()
            .run(testing::admin(), |s| testing::edit_secret_kind(s, "new-secret"))
            .events();
        let (_, evictions) = fold_history(&events);
        assert_eq!(*evictions.last().unwrap(), None);

        // An edit that names another key (the server records key changes as rotations; a
        // hand-made payload stands in for a future server).
        let mut dir = KeyDirectory::new();
        for (i, e) in testing::cmk_org().events().iter().enumerate() {
            dir.apply(&cloud_event(testing::org_id(), u64::try_from(i).unwrap(), e));
        }
        let mut edited = cloud_event(testing::org_id(), 9, &events[events.len() - 1]);
        edited.data["connection"]["key_identifier"] = json!(testing::key_c().to_string());
        assert_eq!(
            dir.apply(&edited),
            Applied::Org {
                org: testing::org_id(),
                eviction: Some(Eviction::KeyChanged)
            }
        );
    }

    #[test]
    fn lock_evicts_and_unlock_does_not() {
        let events = testing::cmk_org()
            .plan(Plan::free())
            .plan(Plan::enterprise("standard"))
            .events();
        let (dir, evictions) = fold_history(&events);
        assert!(evictions.contains(&Some(Eviction::Locked)));
        assert!(!dir.org(testing::org_id()).unwrap().locked);
        let locked_at = evictions
            .iter()
            .position(|e| *e == Some(Eviction::Locked))
            .unwrap();
        let (dir, _) = fold_history(&events[..=locked_at]);
        assert!(dir.org(testing::org_id()).unwrap().locked);
    }

    #[test]
    fn switch_to_provider_evicts_and_moves_the_active_dek() {
        let events = testing::cmk_org().switch().events();
        let (dir, evictions) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert_eq!(org.mode, Mode::ProviderManaged);
        assert_eq!(org.active_dek, Some(DekId(3)));
        assert_eq!(org.key_identifier, None);
        assert!(evictions.contains(&Some(Eviction::SwitchedToProviderManaged)));
    }

    #[test]
    fn a_switch_ends_the_revoked_class() {
        let events = testing::cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .run(testing::admin(), |_| testing::abandon_switch_kind())
            .events();
        let (dir, _) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert!(!org.is_revoked());
        assert_eq!(org.mode, Mode::ProviderManaged);
    }

    #[test]
    fn data_loss_evicts_and_records_the_lost_deks() {
        let events = testing::cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events();
        let (dir, evictions) = fold_history(&events);
        let org = dir.org(testing::org_id()).unwrap();
        assert!(org.data_lost);
        assert_eq!(org.lost_dek_ids, BTreeSet::from([DekId(2)]));
        assert_eq!(*evictions.last().unwrap(), Some(Eviction::DataLost));
    }

    #[test]
    fn audit_checkpoints_releases_and_unknown_types_are_ignored() {
        let mut dir = KeyDirectory::new();
        let audit: CloudEvent = serde_json::from_value(json!({
            "source": "keyledger/audit", "type": "keyledger.AuditCheckpointSigned.v1",
            "subject": "global", "data": {"tree_size": 5}
        }))
        .unwrap();
        assert_eq!(dir.apply(&audit), Applied::Ignored);
        for t in [
            "keyledger.DataKeyReleased.v1",
            "keyledger.SomethingNew.v7",
            "not-a-keyledger-type",
            "keyledger.TenantAdded.v1",
        ] {
            let ev: CloudEvent = serde_json::from_value(json!({
                "source": format!("keyledger/organizations/{}", testing::org_id()),
                "type": t, "data": {"dek_id": 1, "anything": true}
            }))
            .unwrap();
            assert_eq!(dir.apply(&ev), Applied::Ignored, "{t}");
        }
        assert!(dir.is_empty());
    }

    #[test]
    fn an_unreadable_key_event_evicts() {
        let mut dir = KeyDirectory::new();
        let ev: CloudEvent = serde_json::from_value(json!({
            "source": format!("keyledger/organizations/{}", testing::org_id()),
            "type": "keyledger.KeyHealthChanged.v2", "data": {"to": "a_status_from_the_future"}
        }))
        .unwrap();
        assert_eq!(
            dir.apply(&ev),
            Applied::Org {
                org: testing::org_id(),
                eviction: Some(Eviction::Unreadable)
            }
        );
    }

    #[test]
    fn orgs_are_kept_apart() {
        let mut dir = KeyDirectory::new();
        for (i, e) in testing::cmk_org().events().iter().enumerate() {
            dir.apply(&cloud_event(testing::org_id(), u64::try_from(i).unwrap(), e));
        }
        for (i, e) in History::new().register(Plan::free()).events().iter().enumerate() {
            dir.apply(&cloud_event(
                testing::other_org_id(),
                u64::try_from(i).unwrap(),
                e,
            ));
        }
        assert_eq!(dir.len(), 2);
        assert_eq!(dir.org(testing::org_id()).unwrap().mode, Mode::CustomerManaged);
        assert_eq!(
            dir.org(testing::other_org_id()).unwrap().mode,
            Mode::ProviderManaged
        );
    }
}
