//! The seed's troubleshooting table, row by row, driven through the official SDK client
//! (KeyClient + ClientSecretCredential) in keyledger-azure against the simulated vault, in
//! process (no sockets).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keyledger_azure::{AzureConfig, AzureKeyAccess, InProcessTransport};
use keyledger_domain::{Connection, HealthStatus, HostAllowList, KeyIdentifier};
use keyledger_keys::{
    CheckName, Dek, KeyAccess, KeyOperation, Reason, RetryPolicy, Retrying, test_connection,
};
use keyledger_vault_sim::{AppPatch, AppRegistration, Clock, Faults, KeyPatch, NewKey, Vault, VaultConfig};
use secrecy::SecretString;

const BASE: &str = "https://contoso.vault.azure.net";
const CLIENT: &str = "0b6f5d4e-1111-4222-8333-444455556666";
const SECRET: &str = "first-secret-Zq8~value";

struct Env {
    vault: Arc<Vault>,
    clock: Clock,
    access: Retrying<AzureKeyAccess>,
    tenant: String,
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
    }
}

fn env_with(perms: &[&str]) -> Env {
    let clock = Clock::fixed(t0());
    let vault = Vault::new(VaultConfig::default(), clock.clone());
    let tenant = vault.config().tenant_id.clone();
    vault.register_app(AppRegistration::new(&tenant, CLIENT, SECRET, perms));
    vault.create_key(BASE, NewKey::rsa("cmk", 2048)).unwrap();
    let config = AzureConfig {
        request_timeout: Duration::from_secs(5),
        ..AzureConfig::default()
    };
    let access = AzureKeyAccess::with_transport(config, InProcessTransport::transport(vault.clone()))
        .retrying(policy());
    Env {
        vault,
        clock,
        access,
        tenant,
    }
}

fn env() -> Env {
    env_with(&["get", "wrapKey", "unwrapKey"])
}

impl Env {
    fn connection(&self, secret: &str) -> Connection {
        Connection {
            directory_id: self.tenant.parse().unwrap(),
            application_id: CLIENT.parse().unwrap(),
            client_secret: SecretString::from(secret.to_owned()),
            key_identifier: KeyIdentifier::parse(
                &format!("{BASE}/keys/cmk"),
                &HostAllowList::azure_public_clouds(),
            )
            .unwrap(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A connection pinned by a passing test, and an EDEK wrapped under it.
    async fn enabled_key(&self) -> (Connection, Dek, keyledger_domain::Edek) {
        let t = test_connection(&self.access, &self.connection(SECRET), self.now()).await;
        let key = t.outcome.expect("a healthy key passes");
        let pinned = key.connection().clone();
        let dek = Dek::generate();
        let wrapped = self.access.wrap(&pinned, &dek).await.unwrap();
        assert!(wrapped.wrapped_by().is_customer(key.key()));
        (pinned, dek, wrapped.edek().clone())
    }

    fn version(&self) -> String {
        self.vault.versions("cmk").last().unwrap().clone()
    }
}

fn failed_check(t: &keyledger_keys::ConnectionTest) -> CheckName {
    let last = t.checks.last().unwrap();
    assert!(!last.ok);
    last.name
}

#[tokio::test]
async fn healthy_key_passes_and_is_pinned_to_its_version() {
    let env = env();
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    let key = t.outcome.as_ref().unwrap();
    assert_eq!(key.key().version(), Some(env.version().as_str()));
    assert_eq!(key.properties().key_size, 2048);
    assert_eq!(key.properties().kty, "RSA");
    assert!(t.checks.iter().all(|c| c.ok));
    assert_eq!(t.checks.len(), 7);
}

#[tokio::test]
async fn row1_credentials_expired_then_fixed_by_a_new_secret() {
    let env = env();
    env.vault.update_app(
        CLIENT,
        AppPatch::default().expires(Some(t0() - chrono::Duration::days(1))),
    );
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    let e = t.outcome.as_ref().unwrap_err();
    assert_eq!(e.reason, Reason::CredentialsExpired, "{e}");
    assert_eq!(e.detail.as_deref(), Some("token endpoint HTTP 401 AADSTS7000222"));
    assert_eq!(failed_check(&t), CheckName::ReadKey);
    assert!(!e.is_transient());

    // The administrator creates a new secret and edits the connection.
    env.vault.update_app(
        CLIENT,
        AppPatch::default()
            .expires(Some(t0() + chrono::Duration::days(365)))
            .secret("second-secret-value"),
    );
    let t = test_connection(&env.access, &env.connection("second-secret-value"), env.now()).await;
    assert!(t.is_ok(), "{:?}", t.outcome);
    // The old credential was dropped with the old secret.
    assert_eq!(env.access.inner().cached_clients(), 1);
}

#[tokio::test]
async fn row1_credentials_deleted_then_fixed_by_a_new_app() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault.delete_app(CLIENT);
    // A fresh adapter: no cached token (the real service would also honour a live token).
    let access = AzureKeyAccess::with_transport(
        AzureConfig::default(),
        InProcessTransport::transport(env.vault.clone()),
    )
    .retrying(policy());
    let e = access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::CredentialsInvalid);
    assert_eq!(e.detail.as_deref(), Some("token endpoint HTTP 400 AADSTS700016"));

    env.vault.register_app(AppRegistration::new(
        &env.tenant,
        CLIENT,
        "brand-new",
        &["get", "wrapKey", "unwrapKey"],
    ));
    let fixed = Connection {
        client_secret: SecretString::from("brand-new"),
        ..pinned
    };
    assert!(access.unwrap(&fixed, &edek).await.is_ok());
}

#[tokio::test]
async fn a_wrong_secret_is_credentials_invalid() {
    let env = env();
    let t = test_connection(&env.access, &env.connection("not-the-secret"), env.now()).await;
    let e = t.outcome.unwrap_err();
    assert_eq!(e.reason, Reason::CredentialsInvalid);
    assert_eq!(e.detail.as_deref(), Some("token endpoint HTTP 401 AADSTS7000215"));
}

#[tokio::test]
async fn row2_key_expired_still_unwraps_and_is_flagged() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    let exp = (t0() + chrono::Duration::days(30)).timestamp();
    env.vault
        .update_key(
            BASE,
            "cmk",
            Some(&env.version()),
            KeyPatch {
                exp: Some(Some(exp)),
                ..KeyPatch::default()
            },
        )
        .unwrap();
    env.clock.advance(chrono::Duration::days(31));

    // Unwrap still works: the customer-managed key "still works".
    let back = env.access.unwrap(&pinned, &edek).await.unwrap();
    assert_eq!(back, dek);
    // Wrap is refused by the vault.
    let e = env.access.wrap(&pinned, &Dek::generate()).await.unwrap_err();
    assert_eq!(e.reason, Reason::KeyExpired);
    assert_eq!(e.detail.as_deref(), Some("vault HTTP 403 Forbidden/KeyExpired"));
    // The connection test flags it, and key health shows key_expired.
    let t = test_connection(&env.access, &pinned, env.now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyExpired);
    assert_eq!(failed_check(&t), CheckName::NotExpired);
    assert_eq!(Reason::KeyExpired.health_status(), HealthStatus::KeyExpired);
}

#[tokio::test]
async fn key_not_yet_valid_is_refused() {
    let env = env();
    let nbf = (t0() + chrono::Duration::days(1)).timestamp();
    env.vault
        .update_key(
            BASE,
            "cmk",
            Some(&env.version()),
            KeyPatch {
                nbf: Some(Some(nbf)),
                ..KeyPatch::default()
            },
        )
        .unwrap();
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyNotYetValid);
    assert_eq!(failed_check(&t), CheckName::NotBefore);
}

#[tokio::test]
async fn row3_key_deleted_then_restored_within_retention() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    env.vault.delete_key(BASE, "cmk").unwrap();

    let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::KeyNotFound);
    assert_eq!(e.detail.as_deref(), Some("vault HTTP 404 KeyNotFound"));
    // The name cannot be reused while the key is recoverable.
    let conflict = env.vault.create_key(BASE, NewKey::rsa("cmk", 2048)).unwrap_err();
    assert_eq!(
        (conflict.status, conflict.inner),
        (409, Some("ObjectIsDeletedButRecoverable"))
    );

    env.clock.advance(chrono::Duration::days(89));
    env.vault.recover_key(BASE, "cmk").unwrap();
    assert_eq!(env.access.unwrap(&pinned, &edek).await.unwrap(), dek);
    assert!(test_connection(&env.access, &pinned, env.now()).await.is_ok());
}

#[tokio::test]
async fn a_deleted_key_is_purged_when_retention_ends() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault.delete_key(BASE, "cmk").unwrap();
    env.clock.advance(chrono::Duration::days(91));
    assert_eq!(env.vault.recover_key(BASE, "cmk").unwrap_err().status, 404);
    assert_eq!(
        env.access.unwrap(&pinned, &edek).await.unwrap_err().reason,
        Reason::KeyNotFound
    );
}

#[tokio::test]
async fn row4_key_purged_with_a_backup_is_restored_with_the_same_id() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    // A second version, so the backup must carry every version.
    env.vault.create_key(BASE, NewKey::rsa("cmk", 2048)).unwrap();
    let versions = env.vault.versions("cmk");
    let backup = env.vault.backup_key("cmk").unwrap()["value"]
        .as_str()
        .unwrap()
        .to_owned();
    env.vault.delete_key(BASE, "cmk").unwrap();
    env.vault.purge_key("cmk").unwrap();
    assert_eq!(
        env.access.unwrap(&pinned, &edek).await.unwrap_err().reason,
        Reason::KeyNotFound
    );

    env.vault.restore_key(BASE, &backup).unwrap();
    assert_eq!(env.vault.versions("cmk"), versions, "name and every version kept");
    assert_eq!(env.access.unwrap(&pinned, &edek).await.unwrap(), dek);
    // Same identifier: the pinned connection passes again, no edit needed (R12).
    let t = test_connection(&env.access, &pinned, env.now()).await;
    assert_eq!(t.outcome.unwrap().key(), &pinned.key_identifier);
}

#[tokio::test]
async fn row5_key_purged_without_backup_is_permanently_not_found() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault.delete_key(BASE, "cmk").unwrap();
    env.vault.purge_key("cmk").unwrap();
    let before = env.vault.request_count();
    let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::KeyNotFound);
    assert!(!e.is_transient());
    assert_eq!(
        env.vault.request_count() - before,
        1,
        "a definitive reason is not retried"
    );
    assert_eq!(env.vault.recover_key(BASE, "cmk").unwrap_err().status, 404);
    assert!(env.vault.restore_key(BASE, "not-a-backup").is_err());
}

#[tokio::test]
async fn missing_wrap_permission() {
    let env = env_with(&["get", "unwrapKey"]);
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    let e = t.outcome.as_ref().unwrap_err();
    assert_eq!(
        e.reason,
        Reason::PermissionDenied {
            operation: KeyOperation::WrapKey
        }
    );
    assert_eq!(
        e.detail.as_deref(),
        Some("vault HTTP 403 Forbidden/ForbiddenByPolicy")
    );
    assert_eq!(failed_check(&t), CheckName::WrapUnwrap);
}

#[tokio::test]
async fn missing_unwrap_permission() {
    let env = env_with(&["get", "wrapKey"]);
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    assert_eq!(
        t.outcome.as_ref().unwrap_err().reason,
        Reason::PermissionDenied {
            operation: KeyOperation::UnwrapKey
        }
    );
    assert_eq!(failed_check(&t), CheckName::WrapUnwrap);
}

#[tokio::test]
async fn missing_get_permission() {
    let env = env_with(&["wrapKey", "unwrapKey"]);
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    assert_eq!(
        t.outcome.as_ref().unwrap_err().reason,
        Reason::PermissionDenied {
            operation: KeyOperation::Get
        }
    );
    assert_eq!(failed_check(&t), CheckName::ReadKey);
}

#[tokio::test]
async fn disabled_key_fails_the_test_and_refuses_unwrap() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault
        .update_key(
            BASE,
            "cmk",
            None,
            KeyPatch {
                enabled: Some(false),
                ..KeyPatch::default()
            },
        )
        .unwrap();
    let t = test_connection(&env.access, &pinned, env.now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::KeyDisabled);
    assert_eq!(failed_check(&t), CheckName::Enabled);
    let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::KeyDisabled);
    assert_eq!(e.detail.as_deref(), Some("vault HTTP 403 Forbidden/KeyDisabled"));
}

#[tokio::test]
async fn key_ops_without_wrap_are_unsupported() {
    let env = env();
    env.vault
        .update_key(
            BASE,
            "cmk",
            None,
            KeyPatch {
                key_ops: Some(vec!["encrypt".into(), "decrypt".into()]),
                ..KeyPatch::default()
            },
        )
        .unwrap();
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::UnsupportedKey);
    assert_eq!(failed_check(&t), CheckName::KeyOps);
}

#[tokio::test]
async fn throttling_is_retried_within_the_bound_then_reported() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    env.vault.set_faults(Faults {
        status: Some(429),
        ..Faults::default()
    });
    let before = env.vault.request_count();
    let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::Throttled);
    assert!(e.is_transient());
    assert_eq!(
        e.retry_after,
        Some(Duration::from_secs(1)),
        "Retry-After: 1 from the vault"
    );
    assert_eq!(
        env.vault.request_count() - before,
        3,
        "exactly max_attempts requests"
    );

    // Two throttled answers, then success: within the bound of 3 attempts.
    env.vault.set_faults(Faults {
        status: Some(429),
        count: Some(2),
        ..Faults::default()
    });
    assert_eq!(env.access.unwrap(&pinned, &edek).await.unwrap(), dek);
}

#[tokio::test]
async fn server_errors_are_retried_within_the_bound_then_reported() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    for status in [500, 503] {
        env.vault.set_faults(Faults {
            status: Some(status),
            ..Faults::default()
        });
        let before = env.vault.request_count();
        let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
        assert_eq!(e.reason, Reason::VaultError);
        assert_eq!(e.detail, Some(format!("vault HTTP {status} ServiceUnavailable")));
        assert_eq!(env.vault.request_count() - before, 3);
    }
    env.vault.set_faults(Faults {
        status: Some(503),
        count: Some(1),
        ..Faults::default()
    });
    assert_eq!(env.access.unwrap(&pinned, &edek).await.unwrap(), dek);
}

#[tokio::test]
async fn an_unreachable_vault_is_transient() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault.set_faults(Faults {
        unreachable: true,
        ..Faults::default()
    });
    let e = env.access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::VaultUnreachable);
    assert_eq!(
        Reason::VaultUnreachable.health_status(),
        HealthStatus::VaultUnreachable
    );
}

#[tokio::test]
async fn a_slow_vault_hits_the_per_request_timeout() {
    let env = env();
    let (pinned, _, edek) = env.enabled_key().await;
    env.vault.set_faults(Faults {
        latency_ms: Some(2_000),
        ..Faults::default()
    });
    let access = Retrying::new(
        env.access.inner(),
        RetryPolicy {
            max_attempts: 2,
            request_timeout: Duration::from_millis(100),
            ..policy()
        },
    );
    let started = std::time::Instant::now();
    let e = access.unwrap(&pinned, &edek).await.unwrap_err();
    assert_eq!(e.reason, Reason::VaultUnreachable);
    assert_eq!(e.detail.as_deref(), Some("request timed out"));
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn a_host_off_the_allow_list_is_refused_without_any_request() {
    let env = env();
    let permissive = HostAllowList::new(["evil.example.com"]);
    let connection = Connection {
        key_identifier: KeyIdentifier::parse("https://evil.example.com/keys/cmk", &permissive).unwrap(),
        ..env.connection(SECRET)
    };
    let t = test_connection(&env.access, &connection, env.now()).await;
    let e = t.outcome.as_ref().unwrap_err();
    assert_eq!(e.reason, Reason::KeyNotAllowed);
    assert!(!e.is_transient());
    assert_eq!(
        env.vault.request_count(),
        0,
        "the simulated vault saw no request at all"
    );
    assert_eq!(
        env.access.inner().cached_clients(),
        0,
        "no client or credential was built"
    );
}

#[tokio::test]
async fn a_token_from_another_tenant_is_refused_by_the_vault() {
    let env = env();
    let other_tenant = "11111111-2222-4333-8444-555555555555";
    env.vault.register_app(AppRegistration::new(
        other_tenant,
        "22222222-2222-4333-8444-555555555555",
        "x",
        &["get"],
    ));
    let connection = Connection {
        directory_id: other_tenant.parse().unwrap(),
        application_id: "22222222-2222-4333-8444-555555555555".parse().unwrap(),
        client_secret: SecretString::from("x"),
        ..env.connection(SECRET)
    };
    let e = env.access.describe(&connection).await.unwrap_err();
    assert_eq!(e.reason, Reason::CredentialsInvalid);
    assert_eq!(e.detail.as_deref(), Some("vault HTTP 401 Unauthorized"));
}

#[tokio::test]
async fn a_new_key_version_does_not_move_a_pinned_connection() {
    let env = env();
    let (pinned, dek, edek) = env.enabled_key().await;
    env.vault.create_key(BASE, NewKey::rsa("cmk", 2048)).unwrap();
    assert_eq!(env.access.unwrap(&pinned, &edek).await.unwrap(), dek);
    // A versionless connection now pins the new version.
    let t = test_connection(&env.access, &env.connection(SECRET), env.now()).await;
    let key = t.outcome.unwrap();
    assert_ne!(key.key(), &pinned.key_identifier);
    assert_eq!(key.key().version(), Some(env.version().as_str()));
}

#[tokio::test]
async fn an_ec_key_is_unsupported() {
    let env = env();
    env.vault.create_key(BASE, NewKey::ec_p256("ec-key")).unwrap();
    let connection = Connection {
        key_identifier: KeyIdentifier::parse(
            &format!("{BASE}/keys/ec-key"),
            &HostAllowList::azure_public_clouds(),
        )
        .unwrap(),
        ..env.connection(SECRET)
    };
    let t = test_connection(&env.access, &connection, env.now()).await;
    assert_eq!(t.outcome.as_ref().unwrap_err().reason, Reason::UnsupportedKey);
    assert_eq!(failed_check(&t), CheckName::KeyType);
}

#[tokio::test]
async fn clients_are_cached_per_connection_and_evicted() {
    let env = env();
    let c = env.connection(SECRET);
    env.access.describe(&c).await.unwrap();
    let after_first = env.vault.request_count();
    env.access.describe(&c).await.unwrap();
    // The cached client reuses its token and challenge scope: one request, no token fetch.
    assert_eq!(env.vault.request_count() - after_first, 1);
    assert_eq!(env.access.inner().cached_clients(), 1);
    env.access.inner().evict(&c);
    assert_eq!(env.access.inner().cached_clients(), 0);
    env.access.describe(&c).await.unwrap();
    // A new client: challenge, token, then the request again.
    assert_eq!(env.vault.request_count() - after_first, 4);
}

#[tokio::test]
async fn rsa_3072_and_4096_keys_pass() {
    let env = env();
    for (name, bits) in [("cmk-3072", 3072), ("cmk-4096", 4096)] {
        env.vault.create_key(BASE, NewKey::rsa(name, bits)).unwrap();
        let connection = Connection {
            key_identifier: KeyIdentifier::parse(
                &format!("{BASE}/keys/{name}"),
                &HostAllowList::azure_public_clouds(),
            )
            .unwrap(),
            ..env.connection(SECRET)
        };
        let t = test_connection(&env.access, &connection, env.now()).await;
        let key = t.outcome.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(key.properties().key_size, bits);
    }
}

#[tokio::test]
async fn the_client_cache_is_bounded_least_recently_used_first() {
    let env = env();
    let access = AzureKeyAccess::with_transport(
        AzureConfig::default(),
        InProcessTransport::transport(env.vault.clone()),
    )
    .with_client_cache_limit(2);
    let a = env.connection(SECRET);
    let other_app = |id: &str| Connection {
        application_id: id.parse().unwrap(),
        ..env.connection(SECRET)
    };
    let b = other_app("0b6f5d4e-1111-4222-8333-000000000002");
    let c = other_app("0b6f5d4e-1111-4222-8333-000000000003");
    access.describe(&a).await.unwrap();
    // Unknown apps fail at the token endpoint, but their clients were built and cached.
    let _ = access.describe(&b).await;
    access.describe(&a).await.unwrap(); // a is now the most recent
    let _ = access.describe(&c).await; // evicts b
    assert_eq!(access.cached_clients(), 2);
    let before = env.vault.request_count();
    access.describe(&a).await.unwrap();
    assert_eq!(
        env.vault.request_count() - before,
        1,
        "a kept its client and token"
    );
}

#[tokio::test]
async fn dev_mode_demo_connection_passes_through_the_sdk() {
    let vault = Vault::new(VaultConfig::default(), Clock::system());
    let demo = vault.seed_demo("https://demo.vault.azure.net").unwrap();
    let access = AzureKeyAccess::simulated(vault.clone()).retrying(RetryPolicy::default());
    let connection = Connection {
        directory_id: demo.directory_id.parse().unwrap(),
        application_id: demo.application_id.parse().unwrap(),
        client_secret: SecretString::from(demo.client_secret.to_string()),
        key_identifier: KeyIdentifier::parse(&demo.key_identifier, &HostAllowList::azure_public_clouds())
            .unwrap(),
    };
    let t = test_connection(&access, &connection, Utc::now()).await;
    assert!(t.is_ok(), "{:?}", t.outcome);
}

#[tokio::test]
async fn a_soft_deleted_key_has_a_deleted_key_record_with_its_purge_date() {
    let env = env();
    let (pinned, _, _) = env.enabled_key().await;
    assert_eq!(
        env.access.deleted_key(&pinned).await.unwrap(),
        None,
        "not deleted"
    );
    env.vault.delete_key(BASE, "cmk").unwrap();
    let retention = i64::from(env.vault.config().retention_days);
    let record = env.access.deleted_key(&pinned).await.unwrap().unwrap();
    assert_eq!(record.deleted_at, Some(t0()));
    assert_eq!(
        record.scheduled_purge_at,
        Some(t0() + chrono::Duration::days(retention))
    );
    assert_eq!(
        record.recovery_id.as_deref(),
        Some(&*format!("{BASE}/deletedkeys/cmk"))
    );
    // Recovered: no record. Deleted and purged: none either.
    env.vault.recover_key(BASE, "cmk").unwrap();
    assert_eq!(env.access.deleted_key(&pinned).await.unwrap(), None);
    env.vault.delete_key(BASE, "cmk").unwrap();
    env.vault.purge_key("cmk").unwrap();
    assert_eq!(env.access.deleted_key(&pinned).await.unwrap(), None);
}

#[tokio::test]
async fn a_deleted_key_has_no_record_once_retention_ends() {
    let env = env();
    let (pinned, _, _) = env.enabled_key().await;
    env.vault.delete_key(BASE, "cmk").unwrap();
    let retention = i64::from(env.vault.config().retention_days);
    env.clock
        .advance(chrono::Duration::days(retention) - chrono::Duration::seconds(1));
    assert!(env.access.deleted_key(&pinned).await.unwrap().is_some());
    env.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(env.access.deleted_key(&pinned).await.unwrap(), None);
}

#[tokio::test]
async fn reading_deleted_keys_needs_the_get_permission() {
    let env = env_with(&["wrapKey", "unwrapKey"]);
    let pinned = env.connection(SECRET);
    env.vault.delete_key(BASE, "cmk").unwrap();
    let e = env.access.deleted_key(&pinned).await.unwrap_err();
    assert_eq!(
        e.reason,
        Reason::PermissionDenied {
            operation: KeyOperation::Get
        }
    );
}
