//! The seed's timeline for platform services (issue 14), end to end: `keyledger serve` over
//! HTTPS (a private CA), the official Azure SDK adapter against the `akv-emulator` process, and
//! services embedding `keyledger-client`. The customer disables their key in the vault, a
//! probe records it, every client evicts and refuses; the customer re-enables it, a probe
//! records the recovery, and the old data opens again. Also: rotation, the switch to the
//! provider-managed key, lost data, and ciphertexts that must not open.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Api, Emulator, Serving, certificates};
use keyledger_client::{Client, ClientError, MemoryPositionStore, envelope};
use keyledger_domain::{HealthStatus, OrgId};
use serde_json::{Value, json};

const APP: &str = "5d7c0000-aaaa-4bbb-8ccc-0000000000e4";
const DIRECTORY: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SECRET: &str = "data-keys-test-secret-7c1d";
const ADMIN: &str = "data-keys-admin-token-0001";
const PLATFORM: &str = "data-keys-platform-token-01";
const TENANT: &str = "01900000-0000-7000-8000-00000000000a";

/// Everything a test talks to, running.
struct World {
    emulator: Emulator,
    _server: Serving,
    base: String,
    ca: Vec<u8>,
    api: Api,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let emulator = Emulator::start(&dir.path().join("emulator"));
        let app = json!({"tenant_id": DIRECTORY, "client_id": APP, "client_secret": SECRET,
                         "key_permissions": ["get", "wrapKey", "unwrapKey"]});
        assert_eq!(emulator.control("POST", "apps", app).await, 201);
        for name in ["cmk", "cmk-2"] {
            let key = json!({"name": name, "kty": "RSA", "size": 2048});
            assert_eq!(emulator.control("POST", "keys", key).await, 201);
        }
        let (ca, chain, key) = certificates(dir.path());
        let config = write_config(dir.path(), &emulator, &chain, &key);
        let log = dir.path().join("serve.log");
        let server = Serving::start(&config, &log);
        assert!(server.base.starts_with("https://"), "{}", server.base);
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        Self {
            emulator,
            base: server.base.clone(),
            api: Api::new(http, server.base.clone()),
            _server: server,
            ca,
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        self.api.call(method, path, token, body).await
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        self.api.ok(method, path, token, body).await
    }

    /// A registered enterprise organization with its customer key `key` on; its view.
    async fn customer_managed_org(&self, key: &str) -> (OrgId, Value) {
        let org = OrgId::new_v7();
        self.ok(
            "POST",
            "/v1/organizations",
            PLATFORM,
            Some(
                json!({"org_id": org, "name": "Contoso", "plan": {"kind": "enterprise", "tier": "standard"},
                        "tenants": [{"tenant_id": TENANT, "name": "Default"}]}),
            ),
        )
        .await;
        let connection = json!({"directory_id": DIRECTORY, "application_id": APP, "client_secret": SECRET,
                                "key_identifier": format!("{}/keys/{key}", self.emulator.vault)});
        let view = self
            .ok(
                "POST",
                &format!("/v1/organizations/{org}/customer-managed-key"),
                ADMIN,
                Some(connection),
            )
            .await;
        (org, view)
    }

    async fn probe(&self, org: OrgId) -> String {
        let health = self
            .ok(
                "POST",
                &format!("/v1/organizations/{org}/key-health/probe"),
                ADMIN,
                None,
            )
            .await;
        health["status"].as_str().unwrap().to_owned()
    }

    /// The position of the last event in the log.
    async fn head(&self) -> u64 {
        let mut after = 0;
        loop {
            let page = self
                .ok(
                    "GET",
                    &format!("/v1/events?after={after}&limit=1000"),
                    PLATFORM,
                    None,
                )
                .await;
            let next = page["next_after"].as_u64().unwrap();
            if page["events"].as_array().unwrap().is_empty() || next == after {
                return after;
            }
            after = next;
        }
    }

    /// A service's client, following the stream.
    fn client(&self) -> (Client, keyledger_client::ConsumerHandle) {
        let client = Client::builder(self.base.clone(), PLATFORM)
            .ca_cert_pem(&self.ca)
            .position_store(MemoryPositionStore::new())
            .build()
            .unwrap();
        let consumer = client.spawn_consumer();
        (client, consumer)
    }
}

fn write_config(dir: &Path, emulator: &Emulator, chain: &Path, key: &Path) -> std::path::PathBuf {
    let path = dir.join("keyledger.toml");
    let token = |t: &str, role: &str| {
        format!(
            "\n[[auth.tokens]]\ntoken = \"{t}\"\nsubject = \"{role}@example.com\"\nroles = [\"{role}\"]\n"
        )
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n\
         [store]\nurl = \"sqlite://{}\"\n\n\
         [keys]\ninternal_key_file = \"{}\"\nvault = \"azure\"\n\n\
         [keys.azure]\nauthority_host = \"{}\"\nallowed_vault_hosts = [\"{}\"]\nca_cert = \"{}\"\nrequest_timeout = \"10s\"\n\n\
         [health]\nprobe_interval = \"1h\"\ntransient_grace = \"15m\"\n\n\
         [audit]\nsigning_key_file = \"{}\"\n{}{}",
        chain.display(),
        key.display(),
        dir.join("data/keyledger.db").display(),
        dir.join("data/internal-keys.json").display(),
        emulator.authority_host,
        // The emulator's host with its port: an entry without one allows only port 443.
        emulator.vault.trim_start_matches("https://"),
        emulator.ca_cert,
        dir.join("data/audit-signing-key").display(),
        token(ADMIN, "org_admin"),
        token(PLATFORM, "platform"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (bounded) until `client` has applied `position`.
async fn caught_up(client: &Client, position: u64) {
    tokio::time::timeout(Duration::from_secs(20), client.caught_up(position))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the client did not reach position {position}; it is at {}",
                client.position()
            )
        });
}

fn key_version(view: &Value) -> String {
    view["encryption"]["customer_managed_key"]["key_version"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_timeline_the_customer_refuses_and_relents() {
    let world = World::start().await;
    // 1. Enable.
    let (org, view) = world.customer_managed_org("cmk").await;
    let version = key_version(&view);
    // 2. Services encrypt and decrypt.
    let clients: Vec<_> = (0..3).map(|_| world.client()).collect();
    let sealed = clients[0]
        .0
        .encrypt(org, b"card 4111", b"invoices/42")
        .await
        .unwrap();
    for (client, _) in &clients {
        let opened = client.decrypt(org, &sealed, b"invoices/42").await.unwrap();
        assert_eq!(&opened[..], b"card 4111");
    }
    // 3. The customer disables the key in their vault.
    let off = world
        .emulator
        .control("PATCH", &format!("keys/cmk/{version}"), json!({"enabled": false}))
        .await;
    assert_eq!(off, 200);
    // 4. A probe records key_disabled.
    assert_eq!(world.probe(org).await, "key_disabled");
    let recorded = world.head().await;
    // 5. Every client evicts, and decrypt fails with KeyRevoked without asking keyledger.
    for (client, _) in &clients {
        caught_up(client, recorded).await;
        let releases = client.releases();
        match client.decrypt(org, &sealed, b"invoices/42").await {
            Err(ClientError::KeyRevoked { status, .. }) => assert_eq!(status, HealthStatus::KeyDisabled),
            other => panic!("expected KeyRevoked, got {other:?}"),
        }
        assert!(matches!(
            client.encrypt(org, b"more", b"invoices/43").await,
            Err(ClientError::KeyRevoked { .. })
        ));
        assert_eq!(
            client.releases(),
            releases,
            "a revoked organization makes no release call"
        );
        assert_eq!(client.cached_keys(), 0);
    }
    // keyledger itself refuses the release too.
    let (status, refusal) = world
        .call(
            "POST",
            &format!("/v1/organizations/{org}/data-keys/active/release"),
            PLATFORM,
            None,
        )
        .await;
    assert_eq!((status, refusal["code"].as_str()), (409, Some("key_unavailable")));
    // 6. The customer re-enables the key.
    let on = world
        .emulator
        .control("PATCH", &format!("keys/cmk/{version}"), json!({"enabled": true}))
        .await;
    assert_eq!(on, 200);
    // 7. A probe records healthy, and the old data opens again.
    assert_eq!(world.probe(org).await, "healthy");
    let recovered = world.head().await;
    for (client, _) in &clients {
        caught_up(client, recovered).await;
        let opened = client.decrypt(org, &sealed, b"invoices/42").await.unwrap();
        assert_eq!(&opened[..], b"card 4111");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_the_switch_keep_old_data_readable() {
    let world = World::start().await;
    let (org, _) = world.customer_managed_org("cmk").await;
    let (client, _consumer) = world.client();
    let before = client.encrypt(org, b"before", b"ctx").await.unwrap();
    let first_dek = envelope::dek_of(&before).unwrap();

    // Rotation: old ciphertext still opens (its DEK by id), new ciphertext uses the new DEK.
    let rotated = world
        .ok(
            "POST",
            &format!("/v1/organizations/{org}/customer-managed-key/rotation"),
            ADMIN,
            Some(json!({"key_identifier": format!("{}/keys/cmk-2", world.emulator.vault)})),
        )
        .await;
    caught_up(&client, world.head().await).await;
    assert_eq!(
        &client.decrypt(org, &before, b"ctx").await.unwrap()[..],
        b"before"
    );
    // A rotation re-wraps the DEKs under the new key (DESIGN.md R7): the active DEK is now
    // under cmk-2, and new ciphertext uses it.
    let after = client.encrypt(org, b"after", b"ctx").await.unwrap();
    let active = rotated["encryption"]["active_data_key_id"].as_u64().unwrap();
    assert_eq!(u64::from(envelope::dek_of(&after).unwrap().0), active);
    let keys = client.org_keys(org).unwrap();
    assert!(
        keys.key_identifier
            .as_ref()
            .unwrap()
            .to_string()
            .contains("/keys/cmk-2/"),
        "{keys:?}"
    );
    assert_eq!(keys.active_dek, Some(envelope::dek_of(&after).unwrap()));

    // The switch to the provider-managed key: everything still opens.
    world
        .ok(
            "DELETE",
            &format!("/v1/organizations/{org}/customer-managed-key"),
            ADMIN,
            None,
        )
        .await;
    caught_up(&client, world.head().await).await;
    for (sealed, plain) in [(&before, &b"before"[..]), (&after, &b"after"[..])] {
        assert_eq!(&client.decrypt(org, sealed, b"ctx").await.unwrap()[..], plain);
    }
    // The switch adds a provider-wrapped DEK as the active one.
    let provider = client.encrypt(org, b"provider", b"ctx").await.unwrap();
    assert_ne!(envelope::dek_of(&provider).unwrap(), first_dek);
    assert_eq!(
        &client.decrypt(org, &provider, b"ctx").await.unwrap()[..],
        b"provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_tampered_and_foreign_ciphertexts_fail_with_typed_errors() {
    let world = World::start().await;
    let (org, _) = world.customer_managed_org("cmk").await;
    let (other, _) = world.customer_managed_org("cmk-2").await;
    let (client, _consumer) = world.client();
    let sealed = client.encrypt(org, b"secret row", b"rows/1").await.unwrap();
    let foreign = client.encrypt(other, b"their row", b"rows/1").await.unwrap();

    // A changed byte anywhere, another context, another organization's ciphertext.
    for i in [0, 3, 10, sealed.len() / 2, sealed.len() - 1] {
        let mut tampered = sealed.clone();
        tampered[i] ^= 0x40;
        let result = client.decrypt(org, &tampered, b"rows/1").await;
        assert!(result.is_err(), "byte {i} changed and it opened");
    }
    assert!(matches!(
        client.decrypt(org, &sealed, b"rows/2").await,
        Err(ClientError::Envelope(_))
    ));
    assert!(matches!(
        client.decrypt(org, &foreign, b"rows/1").await,
        Err(ClientError::Envelope(_))
    ));
    assert!(client.decrypt(org, &[], b"rows/1").await.is_err());

    // The key is deleted, then the data declared lost: a typed error, never a plaintext.
    assert_eq!(world.emulator.control("DELETE", "keys/cmk", json!({})).await, 200);
    // Soft-deleted it can still be recovered (key_deleted); purged, it cannot.
    assert_eq!(world.probe(org).await, "key_deleted");
    assert_eq!(
        world
            .emulator
            .control("DELETE", "deletedkeys/cmk", json!({}))
            .await,
        204
    );
    assert_eq!(world.probe(org).await, "key_not_found");
    world
        .ok(
            "POST",
            &format!("/v1/organizations/{org}/data-loss"),
            ADMIN,
            Some(json!({"reason": "the customer purged the key"})),
        )
        .await;
    caught_up(&client, world.head().await).await;
    match client.decrypt(org, &sealed, b"rows/1").await {
        Err(ClientError::DataLost { .. }) => {}
        other => panic!("expected DataLost, got {other:?}"),
    }
    // The other organization is not affected.
    assert_eq!(
        &client.decrypt(other, &foreign, b"rows/1").await.unwrap()[..],
        b"their row"
    );
}
