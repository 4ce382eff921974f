//! The R4 connection test against a small in-memory fake of the key-access port.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use keyledger_domain::{Connection, Edek, HostAllowList, KeyIdentifier, WrappedBy, WrappedDek};
use keyledger_keys::{
    CheckName, Dek, KeyAccess, KeyAccessError, KeyDescription, KeyOperation, Reason, RetryPolicy, Retrying,
    test_connection,
};
use secrecy::SecretString;
use zeroize::Zeroizing;

const VERSION: &str = "0123456789abcdef0123456789abcdef";

/// A fake vault with one key version. "Wrapping" XORs with a fixed pad and prefixes the version,
/// which is enough to test the port's callers. Failures are scripted per operation.
struct FakeVault {
    description: Mutex<KeyDescription>,
    fail_describe: Mutex<Vec<Reason>>,
    fail_wrap: Mutex<Vec<Reason>>,
    fail_unwrap: Mutex<Vec<Reason>>,
    corrupt_unwrap: bool,
    calls: Mutex<Vec<&'static str>>,
}

impl FakeVault {
    fn new() -> Self {
        Self {
            description: Mutex::new(KeyDescription {
                key_identifier: kid(Some(VERSION)),
                kty: "RSA".into(),
                key_size: Some(2048),
                key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
                enabled: true,
                expires_at: None,
                not_before: None,
            }),
            fail_describe: Mutex::default(),
            fail_wrap: Mutex::default(),
            fail_unwrap: Mutex::default(),
            corrupt_unwrap: false,
            calls: Mutex::default(),
        }
    }
    fn edit(&self, f: impl FnOnce(&mut KeyDescription)) {
        f(&mut self.description.lock().unwrap());
    }
    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

fn pop(q: &Mutex<Vec<Reason>>) -> Result<(), KeyAccessError> {
    match q.lock().unwrap().pop() {
        Some(r) => Err(KeyAccessError::new(r)),
        None => Ok(()),
    }
}

#[async_trait]
impl KeyAccess for FakeVault {
    async fn describe(&self, _c: &Connection) -> Result<KeyDescription, KeyAccessError> {
        self.calls.lock().unwrap().push("describe");
        pop(&self.fail_describe)?;
        Ok(self.description.lock().unwrap().clone())
    }
    async fn wrap(&self, c: &Connection, dek: &Dek) -> Result<WrappedDek, KeyAccessError> {
        self.calls.lock().unwrap().push("wrap");
        pop(&self.fail_wrap)?;
        assert_eq!(
            c.key_identifier.version(),
            Some(VERSION),
            "wrap must use the pinned version"
        );
        let edek = dek.expose().iter().map(|b| b ^ 0x5A).collect();
        Ok(WrappedDek::attest(
            WrappedBy::Customer {
                key_identifier: c.key_identifier.clone(),
            },
            Edek(edek),
        ))
    }
    async fn unwrap(&self, c: &Connection, edek: &Edek) -> Result<Dek, KeyAccessError> {
        self.calls.lock().unwrap().push("unwrap");
        pop(&self.fail_unwrap)?;
        assert_eq!(c.key_identifier.version(), Some(VERSION));
        let mut clear: Vec<u8> = edek.0.iter().map(|b| b ^ 0x5A).collect();
        if self.corrupt_unwrap {
            clear[0] ^= 1;
        }
        Ok(Dek::from_bytes(Zeroizing::new(clear)))
    }
}

fn kid(version: Option<&str>) -> KeyIdentifier {
    let s = match version {
        Some(v) => format!("https://contoso.vault.azure.net/keys/cmk/{v}"),
        None => "https://contoso.vault.azure.net/keys/cmk".to_owned(),
    };
    KeyIdentifier::parse(&s, &HostAllowList::azure_public_clouds()).unwrap()
}

fn connection(version: Option<&str>) -> Connection {
    Connection {
        directory_id: "6f1c2b0e-0000-4000-8000-000000000001".parse().unwrap(),
        application_id: "6f1c2b0e-0000-4000-8000-000000000002".parse().unwrap(),
        client_secret: SecretString::from("s3cr3t-value"),
        key_identifier: kid(version),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn names(t: &keyledger_keys::ConnectionTest) -> Vec<(CheckName, bool)> {
    t.checks.iter().map(|c| (c.name, c.ok)).collect()
}

#[tokio::test]
async fn a_good_key_passes_every_check_and_is_pinned_to_the_version_read() {
    let vault = FakeVault::new();
    let t = test_connection(&vault, &connection(None), now()).await;
    let key = t.outcome.as_ref().expect("passes");
    assert_eq!(key.key().version(), Some(VERSION));
    assert_eq!(key.properties().key_size, 2048);
    assert_eq!(key.validated_at(), now());
    assert!(t.checks.iter().all(|c| c.ok));
    assert_eq!(
        t.checks.iter().map(|c| c.name).collect::<Vec<_>>(),
        [
            CheckName::ReadKey,
            CheckName::KeyType,
            CheckName::Enabled,
            CheckName::NotExpired,
            CheckName::NotBefore,
            CheckName::KeyOps,
            CheckName::WrapUnwrap
        ]
    );
    assert_eq!(vault.calls(), ["describe", "wrap", "unwrap"]);
}

#[tokio::test]
async fn a_disabled_key_stops_at_enabled() {
    let vault = FakeVault::new();
    vault.edit(|d| d.enabled = false);
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyDisabled);
    assert_eq!(
        names(&t),
        [
            (CheckName::ReadKey, true),
            (CheckName::KeyType, true),
            (CheckName::Enabled, false)
        ]
    );
    assert_eq!(
        vault.calls(),
        ["describe"],
        "no wrap is attempted after a failed check"
    );
}

#[tokio::test]
async fn an_expired_key_fails_not_expired() {
    let vault = FakeVault::new();
    vault.edit(|d| d.expires_at = Some(now() - chrono::Duration::seconds(1)));
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyExpired);
    assert_eq!(t.checks.last().unwrap().name, CheckName::NotExpired);
}

#[tokio::test]
async fn a_key_not_yet_valid_fails_not_before() {
    let vault = FakeVault::new();
    vault.edit(|d| d.not_before = Some(now() + chrono::Duration::hours(1)));
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyNotYetValid);
    assert_eq!(t.checks.last().unwrap().name, CheckName::NotBefore);
}

#[tokio::test]
async fn missing_key_ops_fail_as_unsupported() {
    let vault = FakeVault::new();
    vault.edit(|d| d.key_ops = vec!["wrapKey".into(), "encrypt".into()]);
    let t = test_connection(&vault, &connection(None), now()).await;
    let e = t.outcome.unwrap_err();
    assert_eq!(e.reason, Reason::UnsupportedKey);
    assert_eq!(e.detail.as_deref(), Some("key_ops lack unwrapKey"));
    assert_eq!(t.checks.last().unwrap().name, CheckName::KeyOps);
}

#[tokio::test]
async fn small_or_non_rsa_keys_are_unsupported() {
    for (kty, size) in [
        ("RSA", Some(1024)),
        ("RSA", None),
        ("EC", None),
        ("oct-HSM", None),
    ] {
        let vault = FakeVault::new();
        vault.edit(|d| {
            d.kty = kty.into();
            d.key_size = size;
        });
        let t = test_connection(&vault, &connection(None), now()).await;
        assert_eq!(
            t.outcome.as_ref().unwrap_err().reason,
            Reason::UnsupportedKey,
            "{kty}"
        );
        assert_eq!(t.checks.last().unwrap().name, CheckName::KeyType);
    }
}

#[tokio::test]
async fn a_read_failure_is_the_first_check() {
    let vault = FakeVault::new();
    vault
        .fail_describe
        .lock()
        .unwrap()
        .push(Reason::CredentialsExpired);
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::CredentialsExpired);
    assert_eq!(names(&t), [(CheckName::ReadKey, false)]);
}

#[tokio::test]
async fn another_version_than_asked_is_refused() {
    let vault = FakeVault::new();
    let t = test_connection(
        &vault,
        &connection(Some("ffffffffffffffffffffffffffffffff")),
        now(),
    )
    .await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyNotFound);
}

#[tokio::test]
async fn wrap_and_unwrap_permission_failures_are_reported_with_the_operation() {
    let vault = FakeVault::new();
    let denied = Reason::PermissionDenied {
        operation: KeyOperation::UnwrapKey,
    };
    vault.fail_unwrap.lock().unwrap().push(denied);
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, denied);
    assert_eq!(
        t.checks.last().unwrap(),
        &keyledger_keys::Check {
            name: CheckName::WrapUnwrap,
            ok: false
        }
    );
}

#[tokio::test]
async fn a_round_trip_that_returns_other_bytes_fails() {
    let mut vault = FakeVault::new();
    vault.corrupt_unwrap = true;
    let t = test_connection(&vault, &connection(None), now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::VaultError);
    assert_eq!(t.checks.last().unwrap().name, CheckName::WrapUnwrap);
}

#[tokio::test(start_paused = true)]
async fn with_retry_a_throttled_wrap_is_retried_and_passes() {
    let vault = FakeVault::new();
    vault
        .fail_wrap
        .lock()
        .unwrap()
        .extend([Reason::Throttled, Reason::VaultError]);
    let retrying = Retrying::new(
        vault,
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            request_timeout: Duration::from_secs(1),
        },
    );
    let t = test_connection(&retrying, &connection(None), now()).await;
    assert!(t.is_ok(), "{:?}", t.outcome);
    assert_eq!(
        retrying.inner().calls(),
        ["describe", "wrap", "wrap", "wrap", "unwrap"]
    );
}

#[tokio::test]
async fn debug_output_of_a_test_has_no_secret() {
    let vault = FakeVault::new();
    let t = test_connection(&vault, &connection(None), now()).await;
    let s = format!("{t:?}");
    assert!(!s.contains("s3cr3t-value"), "{s}");
}
