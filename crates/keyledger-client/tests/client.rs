//! `Client` against a fake keyledger in the test process (`common`): releases and the cache,
//! the stream consumer (reconnects, heartbeats, checkpoints), evictions and fast failure,
//! problem+json refusals, HTTPS with a private CA, and no secret in any output.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Fake, Refusal, TOKEN};
use keyledger_client::{
    Client, ClientError, DirectoryChange, EnvelopeError, Eviction, MemoryPositionStore, Mode, PositionStore,
};
use keyledger_domain::testing::{self, History};
use keyledger_domain::{DekId, HealthStatus, OrgId, Plan};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn org() -> OrgId {
    testing::org_id()
}

fn client(base: &str) -> Client {
    client_with(base, Arc::new(MemoryPositionStore::new()))
}

fn client_with(base: &str, store: Arc<MemoryPositionStore>) -> Client {
    Client::builder(base, TOKEN)
        .position_store(store)
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn caught_up(client: &Client, position: u64) {
    tokio::time::timeout(WAIT, client.caught_up(position))
        .await
        .unwrap_or_else(|_| panic!("not caught up to {position}: at {}", client.position()));
}

async fn next_change(changes: &mut tokio::sync::broadcast::Receiver<DirectoryChange>) -> DirectoryChange {
    tokio::time::timeout(WAIT, changes.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn encrypt_and_decrypt_round_trip_with_one_release_per_key() {
    let fake = Fake::new();
    fake.set_key(org(), 3);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    // The directory does not know the organization: `active` is released, DEK 3 learned.
    let sealed = client.encrypt(org(), b"card 4111", b"invoices/42").await.unwrap();
    assert_eq!(keyledger_client::envelope::dek_of(&sealed).unwrap(), DekId(3));
    for _ in 0..10 {
        client.encrypt(org(), b"more", b"invoices/43").await.unwrap();
    }
    let opened = client.decrypt(org(), &sealed, b"invoices/42").await.unwrap();
    assert_eq!(&opened[..], b"card 4111");
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1);

    // Another client (an empty cache) releases DEK 3 by its id to read it.
    let other = self::client(&base);
    let opened = other.decrypt(org(), &sealed, b"invoices/42").await.unwrap();
    assert_eq!(&opened[..], b"card 4111");
    assert_eq!(fake.releases.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_uses_make_one_release_call() {
    let fake = Fake::new();
    fake.set_key(org(), 1);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.encrypt(org(), b"x", format!("row/{i}").as_bytes()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.releases.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_changed_envelope_another_context_or_another_org_never_opens() {
    let fake = Fake::new();
    fake.set_key(org(), 2);
    fake.set_key(testing::other_org_id(), 2);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let sealed = client.encrypt(org(), b"secret row", b"t/1").await.unwrap();
    let e = client.decrypt(org(), &sealed, b"t/2").await.unwrap_err();
    assert_eq!(e, ClientError::Envelope(EnvelopeError::Rejected));
    let e = client
        .decrypt(testing::other_org_id(), &sealed, b"t/1")
        .await
        .unwrap_err();
    assert_eq!(e, ClientError::Envelope(EnvelopeError::Rejected));
    for i in 0..sealed.len() {
        let mut changed = sealed.clone();
        changed[i] ^= 0x01;
        let result = client.decrypt(org(), &changed, b"t/1").await;
        assert!(result.is_err(), "byte {i} changed and it still opened");
    }
    let e = client.decrypt(org(), &sealed[..10], b"t/1").await.unwrap_err();
    assert!(matches!(e, ClientError::Envelope(EnvelopeError::TooShort(10))));
}

#[tokio::test]
async fn refusals_map_to_typed_errors() {
    let fake = Fake::new();
    fake.set_key(org(), 2);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let problem = |status: u16, code: &str, extra: serde_json::Value| {
        let mut body = json!({"type": format!("urn:keyledger:problem:{code}"), "title": code,
            "status": status, "code": code});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (
            Refusal {
                status: 409,
                body: problem(409, "key_unavailable", json!({"reason": "key_disabled"})),
                retry_after: None,
            },
            ClientError::KeyUnavailable {
                reason: "key_disabled".into(),
            },
        ),
        (
            Refusal {
                status: 409,
                body: problem(409, "data_lost", json!({})),
                retry_after: None,
            },
            ClientError::DataLost {
                org: org(),
                dek_id: None,
            },
        ),
        (
            Refusal {
                status: 503,
                body: problem(503, "key_vault_unavailable", json!({})),
                retry_after: Some(7),
            },
            ClientError::Unavailable {
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        (
            Refusal {
                status: 404,
                body: problem(404, "organization_not_found", json!({})),
                retry_after: None,
            },
            ClientError::OrganizationNotFound { org: org() },
        ),
        (
            Refusal {
                status: 403,
                body: problem(403, "forbidden", json!({})),
                retry_after: None,
            },
            ClientError::Unauthorized { status: 403 },
        ),
        (
            Refusal {
                status: 500,
                body: json!("not a problem"),
                retry_after: None,
            },
            ClientError::Http {
                status: Some(500),
                message: "HTTP 500 (no problem code)".into(),
            },
        ),
    ];
    for (refusal, expected) in cases {
        fake.refuse_releases(Some(refusal));
        assert_eq!(client.encrypt(org(), b"x", b"c").await.unwrap_err(), expected);
    }
    // Refusals are not cached: the next call succeeds.
    fake.refuse_releases(None);
    client.encrypt(org(), b"x", b"c").await.unwrap();

    // A wrong token.
    let wrong = Client::builder(&base, "not-the-token")
        .position_store(MemoryPositionStore::new())
        .build()
        .unwrap();
    assert_eq!(
        wrong.encrypt(org(), b"x", b"c").await.unwrap_err(),
        ClientError::Unauthorized { status: 401 }
    );
    // Nobody listening.
    let closed = self::client("http://127.0.0.1:9");
    assert!(matches!(
        closed.encrypt(org(), b"x", b"c").await.unwrap_err(),
        ClientError::Http { status: None, .. }
    ));
}

#[tokio::test]
async fn a_revoked_org_fails_fast_with_no_release_call_until_its_health_recovers() {
    let events = testing::cmk_org()
        .health(HealthStatus::KeyDisabled)
        .health(HealthStatus::Healthy)
        .events();
    let fake = Fake::new();
    let p = fake.append_all(org(), &events[..4]);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let mut changes = client.subscribe();
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    assert_eq!(client.org_keys(org()).unwrap().active_dek, Some(DekId(2)));

    let sealed = client.encrypt(org(), b"payroll", b"row/1").await.unwrap();
    assert_eq!(keyledger_client::envelope::dek_of(&sealed).unwrap(), DekId(2));
    assert_eq!(
        (fake.releases.load(Ordering::SeqCst), client.cached_keys()),
        (1, 1)
    );
    while next_change(&mut changes).await.position < p {}

    let revoked_at = fake.append(org(), &events[4]);
    let change = next_change(&mut changes).await;
    assert_eq!(change.position, revoked_at);
    assert_eq!(
        change.eviction,
        Some(Eviction::Revoked(HealthStatus::KeyDisabled))
    );
    assert_eq!(change.evicted_keys, 1);
    assert_eq!(client.cached_keys(), 0);

    let revoked = ClientError::KeyRevoked {
        org: org(),
        status: HealthStatus::KeyDisabled,
    };
    for _ in 0..5 {
        assert_eq!(client.encrypt(org(), b"x", b"row/2").await.unwrap_err(), revoked);
        assert_eq!(
            client.decrypt(org(), &sealed, b"row/1").await.unwrap_err(),
            revoked
        );
    }
    assert_eq!(
        fake.releases.load(Ordering::SeqCst),
        1,
        "no release while revoked"
    );

    let healthy_at = fake.append(org(), &events[5]);
    caught_up(&client, healthy_at).await;
    let opened = client.decrypt(org(), &sealed, b"row/1").await.unwrap();
    assert_eq!(&opened[..], b"payroll");
    assert_eq!(fake.releases.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn rotation_lock_data_loss_and_switch_each_evict_the_orgs_keys() {
    let history = testing::cmk_org();
    let base_events = history.events();
    let fake = Fake::new();
    let p = fake.append_all(org(), &base_events);
    // Another organization whose keys must stay.
    fake.set_key(testing::other_org_id(), 1);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let mut changes = client.subscribe();
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    while next_change(&mut changes).await.position < p {}
    client.encrypt(testing::other_org_id(), b"x", b"c").await.unwrap();

    let steps: Vec<(&str, Vec<keyledger_domain::Event>, Eviction)> = vec![
        (
            "rotate",
            testing::cmk_org().rotate(&testing::key_b()).events()[base_events.len()..].to_vec(),
            Eviction::Rotated,
        ),
        (
            "lock",
            testing::cmk_org()
                .rotate(&testing::key_b())
                .plan(Plan::free())
                .events()[base_events.len() + 2..]
                .to_vec(),
            Eviction::Locked,
        ),
    ];
    for (name, events, expected) in steps {
        client.encrypt(org(), b"x", b"c").await.unwrap();
        assert_eq!(client.cached_keys(), 2, "{name}");
        let last = fake.append_all(org(), &events);
        caught_up(&client, last).await;
        let mut evicted = None;
        while let Ok(change) = changes.try_recv() {
            if change.eviction.is_some() {
                evicted = change.eviction;
            }
        }
        assert_eq!(evicted, Some(expected), "{name}");
        assert_eq!(client.cached_keys(), 1, "{name}: the other org's key stays");
    }

    // Data loss, then the switch that abandons it: a fresh organization history.
    let lost = History::new()
        .register(Plan::enterprise("standard"))
        .enable(&testing::key_a())
        .health(HealthStatus::KeyNotFound)
        .declare_lost()
        .run(testing::admin(), |_| testing::abandon_switch_kind())
        .events();
    let third: OrgId = "01900000-0000-7000-8000-0000000000cc".parse().unwrap();
    let p = fake.append_all(third, &lost[..5]);
    caught_up(&client, p).await;
    let sealed_under_2 = {
        // DEK 2 was lost: the directory fails it without a call.
        let key = keyledger_client::DataKey::new(DekId(2), &common::key_bytes(third, 2)).unwrap();
        keyledger_client::envelope::seal(third, &key, b"gone", b"c").unwrap()
    };
    let releases = fake.releases.load(Ordering::SeqCst);
    // Revoked (key_not_found) comes first while the customer key is in use.
    assert!(matches!(
        client.decrypt(third, &sealed_under_2, b"c").await.unwrap_err(),
        ClientError::KeyRevoked { .. }
    ));
    let p = fake.append_all(third, &lost[5..]);
    caught_up(&client, p).await;
    let keys = client.org_keys(third).unwrap();
    assert_eq!(keys.mode, Mode::ProviderManaged);
    assert_eq!(
        client.decrypt(third, &sealed_under_2, b"c").await.unwrap_err(),
        ClientError::DataLost {
            org: third,
            dek_id: Some(DekId(2))
        }
    );
    assert_eq!(fake.releases.load(Ordering::SeqCst), releases);
    // The new provider-managed DEK works.
    let sealed = client.encrypt(third, b"fresh", b"c").await.unwrap();
    assert_eq!(keyledger_client::envelope::dek_of(&sealed).unwrap(), DekId(3));
}

#[tokio::test]
async fn reconnects_resume_after_the_last_event_applied_with_no_gap_and_no_duplicate() {
    let fake = Fake::new();
    *fake.close_after.lock().unwrap() = Some(2);
    let events = testing::cmk_org()
        .rotate(&testing::key_b())
        .health(HealthStatus::KeyExpired)
        .events();
    let p = fake.append_all(org(), &events);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let mut changes = client.subscribe();
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    let mut positions = Vec::new();
    while let Ok(change) = changes.try_recv() {
        positions.push(change.position);
    }
    // Every event the directory folds, once, in order (`DataKeysRewrapped` changes nothing
    // a client holds, so it is applied without a change report).
    let expected: Vec<u64> = (1..=p)
        .filter(|n| events[usize::try_from(*n).unwrap() - 1].event_type() != "DataKeysRewrapped")
        .collect();
    assert_eq!(positions, expected);
    let ids = fake.last_event_ids.lock().unwrap().clone();
    let expected_ids: Vec<Option<String>> = (0..p)
        .step_by(2)
        .map(|n| (n > 0).then(|| n.to_string()))
        .collect();
    assert_eq!(ids[..expected_ids.len()], expected_ids[..]);

    // Live events after the reconnects arrive too.
    let q = fake.append(
        org(),
        &testing::cmk_org().health(HealthStatus::KeyDisabled).events()[4],
    );
    caught_up(&client, q).await;
    assert!(client.org_keys(org()).unwrap().is_revoked());
}

#[tokio::test]
async fn heartbeats_keep_a_quiet_stream_open_and_silence_reopens_it() {
    let fake = Fake::new();
    let p = fake.append_all(org(), &testing::cmk_org().events());
    let base = common::serve(fake.clone()).await;
    let client = Client::builder(&base, TOKEN)
        .position_store(MemoryPositionStore::new())
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .idle_timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    // Heartbeats every 50 ms: one connection for well past the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);

    fake.silent.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let connections = fake.connections.load(Ordering::SeqCst);
    assert!(connections >= 2, "a silent stream is reopened: {connections}");
    let ids = fake.last_event_ids.lock().unwrap().clone();
    assert_eq!(ids[1], Some(p.to_string()));
}

#[tokio::test]
async fn a_stream_closed_at_once_is_retried_with_backoff_not_in_a_busy_loop() {
    let fake = Fake::new();
    *fake.close_after.lock().unwrap() = Some(0);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let _consumer = client.spawn_consumer();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let connections = fake.connections.load(Ordering::SeqCst);
    // 10 ms doubling to 200 ms, jittered: about ten attempts in a second.
    assert!((3..30).contains(&connections), "{connections} connections");
    *fake.close_after.lock().unwrap() = None;
    let p = fake.append_all(org(), &testing::cmk_org().events());
    caught_up(&client, p).await;
}

#[tokio::test]
async fn a_refused_stream_is_retried_no_sooner_than_retry_after() {
    let fake = Fake::new();
    *fake.stream_refusal.lock().unwrap() = Some(Refusal {
        status: 503,
        body: json!({"code": "too_many_streams", "status": 503}),
        retry_after: Some(1),
    });
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let _consumer = client.spawn_consumer();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
    *fake.stream_refusal.lock().unwrap() = None;
    let p = fake.append_all(org(), &testing::cmk_org().events());
    caught_up(&client, p).await;
    assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn audit_checkpoints_releases_and_unknown_types_are_skipped_in_order() {
    let fake = Fake::new();
    let p = fake.append_all(org(), &testing::cmk_org().events());
    fake.append_raw(
        "AuditCheckpointSigned",
        json!({"specversion": "1.0", "source": "keyledger/audit", "subject": "global",
            "type": "keyledger.AuditCheckpointSigned.v1", "data": {"log": "global", "tree_size": 4}}),
    );
    fake.append_raw(
        "DataKeyReleased",
        json!({"specversion": "1.0", "source": format!("keyledger/organizations/{}", org()),
            "subject": org().to_string(), "type": "keyledger.DataKeyReleased.v1",
            "data": {"dek_id": 2, "released_to": "platform"}}),
    );
    fake.append_raw(
        "SomethingNew",
        json!({"specversion": "1.0", "source": format!("keyledger/organizations/{}", org()),
            "type": "keyledger.SomethingNew.v3", "data": {}}),
    );
    let last = fake.append_raw("NotACloudEvent", json!("just a string"));
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let _consumer = client.spawn_consumer();
    caught_up(&client, last).await;
    assert_eq!(client.evictions(), 1, "only the enable evicted (an empty cache)");
    let keys = client.org_keys(org()).unwrap();
    assert_eq!(
        (keys.mode, keys.active_dek),
        (Mode::CustomerManaged, Some(DekId(2)))
    );
    assert!(last > p);
}

#[tokio::test]
async fn a_restarted_client_resumes_from_its_checkpoint() {
    let fake = Fake::new();
    let p = fake.append_all(org(), &testing::cmk_org().events());
    let base = common::serve(fake.clone()).await;
    let store = Arc::new(MemoryPositionStore::new());
    {
        let client = client_with(&base, store.clone());
        let consumer = client.spawn_consumer();
        caught_up(&client, p).await;
        // The checkpoint is saved once the stream pauses.
        tokio::time::timeout(WAIT, async {
            while store.load().unwrap().is_none_or(|c| c.position < p) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        consumer.abort();
    }
    let checkpoint = store.load().unwrap().unwrap();
    assert_eq!(checkpoint.position, p);

    let restarted = client_with(&base, store.clone());
    assert_eq!(restarted.position(), p);
    assert_eq!(restarted.org_keys(org()).unwrap().active_dek, Some(DekId(2)));
    let connections = fake.connections.load(Ordering::SeqCst);
    let _consumer = restarted.spawn_consumer();
    let q = fake.append(
        org(),
        &testing::cmk_org().health(HealthStatus::KeyDisabled).events()[4],
    );
    caught_up(&restarted, q).await;
    let ids = fake.last_event_ids.lock().unwrap().clone();
    assert_eq!(ids[connections], Some(p.to_string()));
    assert!(restarted.org_keys(org()).unwrap().is_revoked());

    // A checkpoint of another server is not resumed.
    let elsewhere = client_with("http://127.0.0.1:9", store);
    assert_eq!(elsewhere.position(), 0);
    assert!(elsewhere.org_keys(org()).is_none());
}

#[tokio::test]
async fn a_file_checkpoint_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("position.json");
    let fake = Fake::new();
    let p = fake.append_all(org(), &testing::cmk_org().events());
    let base = common::serve(fake.clone()).await;
    {
        let client = Client::builder(&base, TOKEN)
            .position_file(&path)
            .build()
            .unwrap();
        let _consumer = client.spawn_consumer();
        caught_up(&client, p).await;
        tokio::time::timeout(WAIT, async {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    }
    let restarted = Client::builder(&base, TOKEN)
        .position_file(&path)
        .build()
        .unwrap();
    assert_eq!(restarted.position(), p);
    assert_eq!(restarted.org_keys(org()).unwrap().mode, Mode::CustomerManaged);
}

#[tokio::test]
async fn https_with_a_private_ca() {
    let fake = Fake::new();
    let p = fake.append_all(org(), &testing::cmk_org().events());
    let (base, ca_pem) = common::serve_tls(fake.clone()).await;
    let client = Client::builder(&base, TOKEN)
        .ca_cert_pem(&ca_pem)
        .position_store(MemoryPositionStore::new())
        .build()
        .unwrap();
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    let sealed = client.encrypt(org(), b"over tls", b"c").await.unwrap();
    assert_eq!(
        &client.decrypt(org(), &sealed, b"c").await.unwrap()[..],
        b"over tls"
    );

    // Without the CA the certificate is refused.
    let untrusting = Client::builder(&base, TOKEN)
        .position_store(MemoryPositionStore::new())
        .build()
        .unwrap();
    assert!(matches!(
        untrusting.encrypt(org(), b"x", b"c").await.unwrap_err(),
        ClientError::Http { status: None, .. }
    ));
    assert!(matches!(
        Client::builder(&base, TOKEN).ca_cert_pem("not pem").build(),
        Err(keyledger_client::BuildError::CaCert)
    ));
}

/// Captures every log line of the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_key_and_no_token_in_debug_output_errors_or_logs() {
    use base64::Engine as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let events = testing::cmk_org().health(HealthStatus::KeyDisabled).events();
    let fake = Fake::new();
    let p = fake.append_all(org(), &events[..4]);
    *fake.close_after.lock().unwrap() = Some(3);
    let base = common::serve(fake.clone()).await;
    let client = client(&base);
    let _consumer = client.spawn_consumer();
    caught_up(&client, p).await;
    let sealed = client.encrypt(org(), b"plaintext-marker", b"c").await.unwrap();
    let mut errors = Vec::new();
    errors.push(client.decrypt(org(), &sealed, b"other").await.unwrap_err());
    fake.refuse_releases(Some(Refusal {
        status: 409,
        body: json!({"code": "key_unavailable", "reason": "key_disabled"}),
        retry_after: None,
    }));
    errors.push(client.decrypt(org(), &sealed[..20], b"c").await.unwrap_err());
    let q = fake.append(org(), &events[4]);
    caught_up(&client, q).await;
    errors.push(client.encrypt(org(), b"x", b"c").await.unwrap_err());
    let wrong = Client::builder(&base, TOKEN)
        .position_store(MemoryPositionStore::new())
        .max_cached_keys(1)
        .build()
        .unwrap();
    errors.push(
        wrong
            .encrypt(testing::other_org_id(), b"x", b"c")
            .await
            .unwrap_err(),
    );

    let key = common::key_bytes(org(), 2);
    let data_key = keyledger_client::DataKey::new(DekId(2), &key).unwrap();
    let builder = Client::builder(&base, TOKEN);
    let mut text = format!("{client:?}\n{builder:?}\n{data_key:?}\n{wrong:?}\n");
    for e in &errors {
        text.push_str(&format!("{e}\n{e:?}\n"));
    }
    text.push_str(&String::from_utf8(captured.0.lock().unwrap().clone()).unwrap());
    assert!(text.contains("evicted"), "the logs were captured: {text}");
    for secret in [
        TOKEN.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(key),
        hex(&key),
        format!("{:?}", &key[..8]),
        "plaintext-marker".to_owned(),
    ] {
        assert!(!text.contains(&secret), "{secret} in:\n{text}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
