//! The backend conformance suite (DESIGN.md §5), written once and mounted by every backend
//! with [`conformance_suite!`](crate::conformance_suite):
//!
//! ```ignore
//! keyledger_store::conformance_suite!(my_backend::TestFixture);
//! ```
//!
//! A backend provides a [`Fixture`]: a fresh, empty store per test plus the few raw hooks that
//! only a backend can offer (tampering with stored bytes, reading them at rest).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{EnvelopeActor, EventMetadata, StoredEvent};
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt as _;
use keyledger_domain::event::{
    CustomerManagedKeyEnabled, DataKeyGenerated, DataKeysRewrapped, RewrappedDataKey, TenantAdded,
};
use keyledger_domain::{
    ActorKind, ApplicationId, AuditCheckpointSigned, AuditLog, CommandId, ConnectionRecord, DecodeError,
    DekId, DirectoryId, Edek, Event, GlobalPosition, KeyIdentifier, KeyProperties, Protected, Role, RootHash,
    StreamId, StreamVersion, TenantId, WrappedBy,
};
use secrecy::{ExposeSecret as _, SecretBox, SecretString};

use crate::chain::{NewEvent, now_micros};
use crate::verify::{ChainProblem, VerifyScope};
use crate::{EventStore, ImportBatch, InMemoryStore, KeyRing, OpenError, StoreError};

/// One backend under test. Each [`Fixture::create`] gives a fresh, empty database.
#[async_trait]
pub trait Fixture: Sized + Send + Sync + 'static {
    type Store: EventStore + Clone + 'static;

    /// A fresh, empty backend sealing with `ring`; `None` skips the test (the fixture prints
    /// why, e.g. "PostgreSQL not reachable").
    async fn create(ring: Arc<KeyRing>) -> Option<Self>;

    fn store(&self) -> Self::Store;

    /// The same stored data, opened with another key ring.
    async fn reopen(&self, ring: Arc<KeyRing>) -> Self::Store;

    /// Replaces `from` by `to` (same length) in the stored payload bytes of one event, keeping
    /// everything else, as an attacker with raw write access would.
    async fn tamper_payload(&self, stream: StreamId, version: StreamVersion, from: &str, to: &str);

    /// Overwrites the stored type and schema version of one event.
    async fn rewrite_type(
        &self,
        stream: StreamId,
        version: StreamVersion,
        event_type: &str,
        schema_version: u32,
    );

    /// The bytes the backend holds at rest (files, pages), to search for clear secrets.
    async fn raw_bytes(&self) -> Vec<u8>;
}

/// Mounts every conformance test for a [`Fixture`] type, as `#[tokio::test]`s.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:ty) => {
        $crate::conformance_suite!(@tests $fixture;
            append_then_read_round_trips,
            empty_append_is_refused,
            wrong_expected_version_is_a_typed_conflict,
            racing_appends_give_one_winner_per_version,
            repeated_command_id_returns_first_result,
            concurrent_repeats_of_a_command_append_once,
            a_command_id_is_never_answered_with_another_streams_result,
            racing_reuses_of_a_command_id_on_two_streams_record_one,
            read_all_sees_every_event_once_under_concurrent_writers,
            subscribe_catches_up_then_goes_live_across_restart,
            live_subscribers_fast_slow_and_late_see_every_event_once,
            verify_names_the_tampered_event,
            secrets_are_never_at_rest_in_clear,
            wrong_or_missing_internal_key_is_a_typed_error,
            rotated_key_ring_opens_old_and_seals_with_newest,
            unknown_type_or_future_version_is_a_typed_error,
            import_round_trips_an_export,
            import_refuses_a_non_empty_store,
            import_rejects_a_tampered_envelope_and_stores_nothing,
            import_rejects_a_gap_or_a_broken_chain,
            a_long_read_all_page_is_whole_and_in_order,
            the_audit_stream_round_trips_beside_organizations
        );
    };
    (@tests $fixture:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::conformance::$name::<$fixture>().await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Event fixtures

/// A stream for a fresh organization.
/// Concurrent appends of one command id: exactly one stored the events, and every other got
/// its result marked as a repeat. Panics, naming the results, otherwise.
pub fn assert_one_stored_the_rest_repeat(results: &[crate::AppendResult]) {
    assert_eq!(
        results.iter().filter(|r| !r.repeat).count(),
        1,
        "one append stores, the others are repeats: {results:?}"
    );
    let stored = |r: &crate::AppendResult| crate::AppendResult { repeat: false, ..*r };
    assert!(
        results.windows(2).all(|w| stored(&w[0]) == stored(&w[1])),
        "{results:?}"
    );
}

pub fn new_stream() -> StreamId {
    StreamId::for_org(keyledger_domain::OrgId::new_v7())
}

/// Metadata of a test event.
pub fn metadata() -> EventMetadata {
    EventMetadata {
        occurred_at: chrono::Utc::now(),
        actor: EnvelopeActor {
            kind: ActorKind::Service,
            id: "conformance".into(),
            roles: BTreeSet::from([Role::Platform]),
            source_ip: Some("127.0.0.1".into()),
        },
        correlation_id: None,
        causation_id: None,
    }
}

/// A signed checkpoint of `log` at `tree_size`, as the checkpointer records it in stream
/// `audit`. The note is a stand-in (this suite checks storage, not signatures).
pub fn checkpoint_signed(log: AuditLog, tree_size: u64) -> NewEvent {
    let origin = match log {
        AuditLog::Global => "keyledger.localhost/global".to_owned(),
        AuditLog::Org(org) => format!("keyledger.localhost/org/{org}"),
    };
    let root_hash = RootHash([u8::try_from(tree_size % 256).unwrap_or(0); 32]);
    let note = format!(
        "{origin}\n{tree_size}\n{}\n\n\u{2014} keyledger.localhost AAAAAHNpZ25hdHVyZQ==\n",
        root_hash.to_base64()
    );
    NewEvent {
        event: Event::AuditCheckpointSigned(AuditCheckpointSigned {
            log,
            origin,
            tree_size,
            root_hash,
            note,
            signed_at: now_micros(),
        }),
        metadata: EventMetadata {
            actor: EnvelopeActor::from_actor(&keyledger_domain::Actor::system(), None),
            ..metadata()
        },
    }
}

/// A small event with no protected field.
pub fn tenant_added(name: &str) -> NewEvent {
    NewEvent {
        event: Event::TenantAdded(TenantAdded {
            tenant_id: TenantId::new_v7(),
            name: name.to_owned(),
        }),
        metadata: metadata(),
    }
}

fn key_identifier() -> KeyIdentifier {
    // Invariant: a fixed, well-formed AKV key URL.
    KeyIdentifier::parse_shape("https://contoso.vault.azure.net/keys/cmk/0000000000000000000000000000000a")
        .expect("fixture key identifier")
}

/// An enable event carrying `secret` in a protected field.
pub fn cmk_enabled(secret: &str) -> NewEvent {
    NewEvent {
        event: Event::CustomerManagedKeyEnabled(CustomerManagedKeyEnabled {
            connection: ConnectionRecord {
                directory_id: DirectoryId::new_v7(),
                application_id: ApplicationId::new_v7(),
                client_secret: Protected::Open(SecretString::from(secret.to_owned())),
                key_identifier: key_identifier(),
            },
            key: KeyProperties {
                kty: "RSA".into(),
                key_size: 3072,
                key_ops: vec!["wrapKey".into(), "unwrapKey".into()],
                expires_at: None,
                not_before: None,
            },
            validated_at: now_micros(),
        }),
        metadata: metadata(),
    }
}

/// A DEK generation carrying `edek` in a protected field.
pub fn dek_generated(edek: &[u8]) -> NewEvent {
    NewEvent {
        event: Event::DataKeyGenerated(DataKeyGenerated {
            dek_id: DekId(2),
            wrapped_by: WrappedBy::Customer {
                key_identifier: key_identifier(),
            },
            edek: Protected::Open(Edek(edek.to_vec())),
            generated_at: now_micros(),
        }),
        metadata: metadata(),
    }
}

fn distinctive_bytes(n: usize) -> Vec<u8> {
    // Random bytes, so a match in the raw storage cannot be a coincidence of a pattern.
    use aes_gcm::aead::rand_core::RngCore as _;
    let mut v = vec![0u8; n];
    aes_gcm::aead::OsRng.fill_bytes(&mut v);
    v
}

fn ring() -> Arc<KeyRing> {
    Arc::new(KeyRing::generate())
}

async fn fixture<F: Fixture>() -> Option<F> {
    F::create(ring()).await
}

async fn append_one<S: EventStore + ?Sized>(
    store: &S,
    stream: StreamId,
    expected: u64,
    name: &str,
) -> Result<crate::AppendResult, StoreError> {
    store
        .append(stream, StreamVersion(expected), vec![tenant_added(name)], None)
        .await
}

/// Reads the whole log once `expected` events are readable. A backend may hold back events
/// behind a fence while unrelated transactions are open (PostgreSQL), so this polls.
async fn read_expecting<S: EventStore + ?Sized>(store: &S, expected: usize) -> Vec<StoredEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut out = Vec::new();
        let mut after = GlobalPosition::START;
        loop {
            let page = store.read_all(after, 500).await.expect("read_all");
            let Some(last) = page.last() else { break };
            after = last.global_position;
            out.extend(page);
        }
        if out.len() >= expected || tokio::time::Instant::now() > deadline {
            assert_eq!(
                out.len(),
                expected,
                "read_all returns exactly the appended events"
            );
            return out;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tenant_name(event: &Event) -> &str {
    match event {
        Event::TenantAdded(t) => &t.name,
        other => panic!("expected TenantAdded, got {}", other.event_type()),
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

pub async fn append_then_read_round_trips<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    let r = store
        .append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("a"), tenant_added("b")],
            None,
        )
        .await
        .expect("append");
    assert_eq!(
        (r.first_version, r.last_version),
        (StreamVersion(1), StreamVersion(2))
    );
    assert!(r.first_position < r.last_position);
    let r2 = append_one(&store, stream, 2, "c").await.expect("append at 2");
    assert!(r2.first_position > r.last_position);

    let events = store
        .read_stream(stream, StreamVersion::NONE)
        .await
        .expect("read_stream");
    assert_eq!(events.len(), 3);
    let names: Vec<String> = events
        .iter()
        .map(|e| tenant_name(&store.open(e).expect("open")).to_owned())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(events[0].prev_hash, crate::GENESIS_HASH);
    for w in events.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
        assert_eq!(w[1].stream_version, w[0].stream_version.next());
    }
    for e in &events {
        assert_eq!(e.hash, crate::envelope_hash(e));
        assert_eq!(
            e.occurred_at.timestamp_subsec_nanos() % 1000,
            0,
            "times are stored in micros"
        );
    }
    assert_eq!(
        events.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![r.first_position, r.last_position, r2.first_position]
    );
    let from_two = store
        .read_stream(stream, StreamVersion(2))
        .await
        .expect("read_stream from 2");
    assert_eq!(from_two.len(), 2);
    assert_eq!(from_two[0].stream_version, StreamVersion(2));
    assert_eq!(read_expecting(&store, 3).await, events);
    let report = store.verify(VerifyScope::All).await.expect("verify");
    assert!(report.is_intact());
    assert_eq!(report.events_checked, 3);
    let told = std::sync::atomic::AtomicU64::new(0);
    let with_progress = store
        .verify_with_progress(VerifyScope::All, &|n| {
            told.store(n, std::sync::atomic::Ordering::SeqCst)
        })
        .await
        .expect("verify with progress");
    assert_eq!(with_progress, report);
    assert_eq!(told.into_inner(), 3, "progress reached every event checked");
}

/// Stream `audit` (ADR 0025) is stored, read, ordered, verified and imported like an
/// organization's stream, takes only checkpoints, and organization streams take none.
pub async fn the_audit_stream_round_trips_beside_organizations<F: Fixture>() {
    let ring = ring();
    let Some(fx) = F::create(ring.clone()).await else {
        return;
    };
    let store = fx.store();
    let org = new_stream();
    let org_id = org.org_id().expect("an organization stream");
    append_one(&store, org, 0, "alpha-0").await.expect("org append");
    let first = store
        .append(
            StreamId::Audit,
            StreamVersion::NONE,
            vec![
                checkpoint_signed(AuditLog::Global, 1),
                checkpoint_signed(AuditLog::Org(org_id), 1),
            ],
            Some(CommandId::parse("checkpoint-1").unwrap()),
        )
        .await
        .expect("audit append");
    assert_eq!(first.stream, StreamId::Audit);
    assert_eq!(
        (first.first_version, first.last_version),
        (StreamVersion(1), StreamVersion(2))
    );
    append_one(&store, org, 1, "alpha-1").await.expect("org append");
    // Optimistic concurrency holds for `audit` as for any stream.
    let stale = store
        .append(
            StreamId::Audit,
            StreamVersion(1),
            vec![checkpoint_signed(AuditLog::Global, 3)],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            StoreError::Conflict {
                stream: StreamId::Audit,
                actual: StreamVersion(2),
                ..
            }
        ),
        "{stale:?}"
    );
    store
        .append(
            StreamId::Audit,
            StreamVersion(2),
            vec![checkpoint_signed(AuditLog::Global, 3)],
            None,
        )
        .await
        .expect("audit append at 2");
    // Each kind of stream takes its own events only.
    let misplaced = store
        .append(
            StreamId::Audit,
            StreamVersion(3),
            vec![tenant_added("nope")],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            misplaced,
            StoreError::WrongStreamKind {
                stream: StreamId::Audit,
                event_type: "TenantAdded"
            }
        ),
        "{misplaced:?}"
    );
    let misplaced = store
        .append(
            org,
            StreamVersion(2),
            vec![checkpoint_signed(AuditLog::Global, 9)],
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            misplaced,
            StoreError::WrongStreamKind {
                event_type: "AuditCheckpointSigned",
                ..
            }
        ),
        "{misplaced:?}"
    );

    let audit = store
        .read_stream(StreamId::Audit, StreamVersion::NONE)
        .await
        .expect("read audit");
    assert_eq!(audit.len(), 3);
    assert!(
        audit
            .iter()
            .all(|e| e.stream_id == StreamId::Audit && e.event_type == "AuditCheckpointSigned")
    );
    assert_eq!(audit[0].prev_hash, crate::GENESIS_HASH);
    assert_eq!(audit[1].prev_hash, audit[0].hash);
    let Event::AuditCheckpointSigned(cp) = store.open(&audit[1]).expect("open a checkpoint") else {
        panic!("a checkpoint decodes as one")
    };
    assert_eq!((cp.log, cp.tree_size), (AuditLog::Org(org_id), 1));
    assert_eq!(
        store.read_stream(org, StreamVersion::NONE).await.unwrap().len(),
        2
    );
    let all = read_expecting(&store, 5).await;
    let kinds: Vec<_> = all.iter().map(|e| e.stream_id).collect();
    assert_eq!(
        kinds,
        [org, StreamId::Audit, StreamId::Audit, org, StreamId::Audit],
        "commit order"
    );
    assert!(store.verify(VerifyScope::All).await.unwrap().is_intact());
    assert!(
        store
            .verify(VerifyScope::Stream(StreamId::Audit))
            .await
            .unwrap()
            .is_intact()
    );

    // An export with `audit` imports into a fresh store as it was.
    if let Some(target) = F::create(ring).await {
        let fresh = target.store();
        fresh
            .import(all.clone(), ImportBatch::First)
            .await
            .expect("import");
        let read = read_expecting(&fresh, 5).await;
        assert_eq!(without_position(&read), without_position(&all));
        assert!(
            fresh
                .verify(VerifyScope::Stream(StreamId::Audit))
                .await
                .unwrap()
                .is_intact()
        );
    }

    // Verify names a tampered checkpoint by its stream.
    fx.tamper_payload(
        StreamId::Audit,
        StreamVersion(2),
        "keyledger.localhost/org",
        "keyledger.localhost/orG",
    )
    .await;
    let brk = store
        .verify(VerifyScope::Stream(StreamId::Audit))
        .await
        .unwrap()
        .first_break
        .expect("verify finds the tampered checkpoint");
    assert_eq!((brk.stream, brk.version), (StreamId::Audit, StreamVersion(2)));
}

/// A page long enough to be decoded in parts comes back whole, in order, equal to the streams.
pub async fn a_long_read_all_page_is_whole_and_in_order<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let streams = [new_stream(), new_stream(), new_stream()];
    for round in 0..3u64 {
        for stream in streams {
            let events = (0..250).map(|i| tenant_added(&format!("t{round}-{i}"))).collect();
            store
                .append(stream, StreamVersion(round * 250), events, None)
                .await
                .expect("append");
        }
    }
    let mut page = Vec::new();
    let mut after = GlobalPosition::START;
    // The fence of a PostgreSQL store may hold the tail back for a moment.
    for _ in 0..200 {
        let more = store.read_all(after, 5000).await.expect("read_all");
        if let Some(last) = more.last() {
            after = last.global_position;
        }
        page.extend(more);
        if page.len() >= 2250 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(page.len(), 2250);
    assert!(
        page.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    for stream in streams {
        let expected = store
            .read_stream(stream, StreamVersion::NONE)
            .await
            .expect("read_stream");
        let got: Vec<_> = page.iter().filter(|e| e.stream_id == stream).cloned().collect();
        assert_eq!(got, expected);
    }
}

pub async fn empty_append_is_refused<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let err = fx
        .store()
        .append(new_stream(), StreamVersion::NONE, vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptyAppend), "{err:?}");
}

pub async fn wrong_expected_version_is_a_typed_conflict<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    append_one(&store, stream, 0, "first").await.expect("append");
    for expected in [0, 2, 7] {
        match append_one(&store, stream, expected, "late").await {
            Err(StoreError::Conflict {
                stream: s,
                expected: e,
                actual,
            }) => {
                assert_eq!(s, stream);
                assert_eq!(e, StreamVersion(expected));
                assert_eq!(actual, StreamVersion(1));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(
        store
            .read_stream(stream, StreamVersion::NONE)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn racing_appends_give_one_winner_per_version<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    const TASKS: usize = 16;
    const ROUNDS: u64 = 6;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    append_one(&store, stream, round, &format!("r{round}-t{t}")).await
                })
            })
            .collect();
        let mut wins = 0;
        for h in handles {
            match h.await.expect("task") {
                Ok(r) => {
                    wins += 1;
                    assert_eq!(r.first_version, StreamVersion(round + 1));
                }
                Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, StreamVersion(round + 1)),
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one append wins");
    }
    let events = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version.0).collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>(), "no gap, no duplicate");
    assert!(
        store
            .verify(VerifyScope::Stream(stream))
            .await
            .unwrap()
            .is_intact()
    );
}

pub async fn repeated_command_id_returns_first_result<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    let cmd = CommandId::parse("cmd-repeat-1").unwrap();
    let first = store
        .append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("x")],
            Some(cmd.clone()),
        )
        .await
        .expect("first");
    // Same command again: even with a now-stale expected version and other events.
    let again = store
        .append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("y"), tenant_added("z")],
            Some(cmd.clone()),
        )
        .await
        .expect("repeat");
    assert!(!first.repeat, "a first append is no repeat");
    assert_eq!(
        again,
        crate::AppendResult {
            repeat: true,
            ..first
        }
    );
    let events = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].command_id.as_ref(), Some(&cmd));
    read_expecting(&store, 1).await;
    // Another command id appends normally.
    let other = store
        .append(
            stream,
            StreamVersion(1),
            vec![tenant_added("w")],
            Some(CommandId::parse("cmd-2").unwrap()),
        )
        .await
        .expect("second command");
    assert_eq!(other.first_version, StreamVersion(2));
}

pub async fn concurrent_repeats_of_a_command_append_once<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    let cmd = CommandId::parse("cmd-concurrent").unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, cmd, barrier) = (store.clone(), cmd.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(stream, StreamVersion::NONE, vec![tenant_added("once")], Some(cmd))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("task").expect("every repeat succeeds"));
    }
    assert_one_stored_the_rest_repeat(&results);
    assert_eq!(
        store
            .read_stream(stream, StreamVersion::NONE)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A command id names one command on one stream. Reused on another stream (after a restart, or
/// through another store instance), it is refused with a typed error and stores nothing; it is
/// never answered with the other stream's append (issue 11, defect 1).
pub async fn a_command_id_is_never_answered_with_another_streams_result<F: Fixture>() {
    let ring = ring();
    let Some(fx) = F::create(ring.clone()).await else {
        return;
    };
    let store = fx.store();
    let (a, b) = (new_stream(), new_stream());
    let cmd = CommandId::parse("cmd-reused").unwrap();
    // Both streams at version 1, so a caller checking only versions would be fooled.
    append_one(&store, a, 0, "a1").await.unwrap();
    append_one(&store, b, 0, "b1").await.unwrap();
    let first = store
        .append(a, StreamVersion(1), vec![tenant_added("a2")], Some(cmd.clone()))
        .await
        .expect("first use");
    let expect_refused = |r: Result<crate::AppendResult, StoreError>, wanted: StreamId| match r {
        Err(StoreError::CommandIdReused {
            command_id,
            stream,
            other_stream,
        }) => {
            assert_eq!(command_id, cmd);
            assert_eq!(stream, wanted);
            assert_eq!(other_stream, a);
        }
        other => panic!("expected CommandIdReused, got {other:?}"),
    };
    // Another stream at the same version, through this store.
    expect_refused(
        store
            .append(b, StreamVersion(1), vec![tenant_added("b2")], Some(cmd.clone()))
            .await,
        b,
    );
    // A new stream (no head to read), and the same after a restart, where only the stored
    // command ids can tell.
    let fresh = new_stream();
    expect_refused(
        store
            .append(
                fresh,
                StreamVersion::NONE,
                vec![tenant_added("f1")],
                Some(cmd.clone()),
            )
            .await,
        fresh,
    );
    let restarted = fx.reopen(ring).await;
    expect_refused(
        restarted
            .append(b, StreamVersion(1), vec![tenant_added("b2")], Some(cmd.clone()))
            .await,
        b,
    );
    expect_refused(
        restarted
            .append(
                fresh,
                StreamVersion::NONE,
                vec![tenant_added("f1")],
                Some(cmd.clone()),
            )
            .await,
        fresh,
    );
    // Nothing was stored for the refused appends; the first stream's repeat still answers.
    assert_eq!(
        restarted.read_stream(b, StreamVersion::NONE).await.unwrap().len(),
        1
    );
    assert!(
        restarted
            .read_stream(fresh, StreamVersion::NONE)
            .await
            .unwrap()
            .is_empty()
    );
    read_expecting(&restarted, 3).await;
    let again = restarted
        .append(a, StreamVersion(1), vec![tenant_added("a2")], Some(cmd.clone()))
        .await
        .expect("a repeat on its own stream");
    assert_eq!(
        again,
        crate::AppendResult {
            repeat: true,
            ..first
        }
    );
}

/// Two appends racing with one command id on two streams: one is stored, the other is refused
/// with [`StoreError::CommandIdReused`] and stores nothing.
pub async fn racing_reuses_of_a_command_id_on_two_streams_record_one<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    for round in 0..10 {
        let cmd = CommandId::parse(&format!("cmd-race-{round}")).unwrap();
        let streams = [new_stream(), new_stream()];
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let handles: Vec<_> = streams
            .iter()
            .map(|&stream| {
                let (store, cmd, barrier) = (store.clone(), cmd.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let r = store
                        .append(stream, StreamVersion::NONE, vec![tenant_added("race")], Some(cmd))
                        .await;
                    (stream, r)
                })
            })
            .collect();
        let mut stored = 0;
        for h in handles {
            let (stream, r) = h.await.expect("task");
            let events = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
            match r {
                Ok(result) => {
                    assert_eq!(result.stream, stream, "an answer about another stream");
                    assert_eq!(events.len(), 1);
                    stored += 1;
                }
                Err(StoreError::CommandIdReused { stream: s, .. }) => {
                    assert_eq!(s, stream);
                    assert!(events.is_empty(), "a refused append stored events");
                }
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        assert_eq!(stored, 1, "round {round}");
    }
}

pub async fn read_all_sees_every_event_once_under_concurrent_writers<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    const WRITERS: usize = 8;
    const PER_WRITER: u64 = 40;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<StoredEvent> = Vec::new();
            let mut after = GlobalPosition::START;
            let total = WRITERS * usize::try_from(PER_WRITER).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            // Until every event was seen (or far past the deadline, then the asserts report it),
            // and a while after, so a duplicate would show.
            let mut extra_polls = 0;
            // Short pages and long ones (which a backend may read in parts).
            let mut limits = [7, 1000].into_iter().cycle();
            while extra_polls < 20 && tokio::time::Instant::now() < deadline {
                let limit = limits.next().unwrap_or(7);
                let page = store.read_all(after, limit).await.expect("read_all");
                assert!(page.len() <= limit);
                if let Some(last) = page.last() {
                    after = last.global_position;
                    seen.extend(page);
                } else {
                    if seen.len() >= total && done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS {
                        extra_polls += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            seen
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let stream = new_stream();
                for v in 0..PER_WRITER {
                    append_one(&store, stream, v, &format!("w{w}-{v}"))
                        .await
                        .expect("append");
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let seen = reader.await.expect("reader");
    let all = read_expecting(&store, WRITERS * usize::try_from(PER_WRITER).unwrap()).await;
    let ids: Vec<_> = seen.iter().map(|e| e.event_id).collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "the poller saw an event twice");
    assert_eq!(
        ids,
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "the poller saw every event once, in the final order"
    );
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
}

async fn next_event(sub: &mut crate::EventStream) -> StoredEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("subscription stalled")
        .expect("subscription ended")
        .expect("subscription error")
}

pub async fn subscribe_catches_up_then_goes_live_across_restart<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    for v in 0..5 {
        append_one(&store, stream, v, &format!("e{v}")).await.unwrap();
    }
    let mut got: Vec<StoredEvent> = Vec::new();
    let mut sub = store.subscribe(GlobalPosition::START);
    for _ in 0..5 {
        got.push(next_event(&mut sub).await);
    }
    // Live: appended while the subscription waits.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for v in 5..10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                append_one(&store, stream, v, &format!("e{v}")).await.unwrap();
            }
        })
    };
    for _ in 0..3 {
        got.push(next_event(&mut sub).await);
    }
    drop(sub);
    let checkpoint = got.last().map(|e| e.global_position).unwrap_or_default();
    writer.await.unwrap();
    for v in 10..12 {
        append_one(&store, stream, v, &format!("e{v}")).await.unwrap();
    }
    let mut sub = store.subscribe(checkpoint);
    for _ in 0..4 {
        got.push(next_event(&mut sub).await);
    }
    // And live again after the restart.
    append_one(&store, stream, 12, "e12").await.unwrap();
    got.push(next_event(&mut sub).await);
    let names: Vec<String> = got
        .iter()
        .map(|e| tenant_name(&store.open(e).unwrap()).to_owned())
        .collect();
    assert_eq!(names, (0..13).map(|v| format!("e{v}")).collect::<Vec<_>>());
    assert_eq!(
        got.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        read_expecting(&store, 13)
            .await
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    );
    // Nothing more.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "no duplicate after the last event"
    );
}

/// Live subscribers share one tail reader. Under concurrent appends, a fast subscriber, a slow
/// one (that falls behind the shared buffer and must catch up from the store and rejoin) and
/// one that starts midway each see every event once, in commit order.
pub async fn live_subscribers_fast_slow_and_late_see_every_event_once<F: Fixture>() {
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 60;
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    append_one(&store, new_stream(), 0, "first").await.unwrap();
    let total = usize::try_from(1 + WRITERS * APPENDS).unwrap();
    let collect = |mut sub: crate::EventStream, pause_every: Option<usize>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < total {
                got.push(next_event(&mut sub).await);
                if pause_every.is_some_and(|n| got.len() % n == 1) {
                    // Far behind: every writer appends meanwhile.
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            }
            // Nothing more: no duplicate after the last event.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), sub.next())
                    .await
                    .is_err(),
                "an event after the last one"
            );
            got
        })
    };
    let fast = collect(store.subscribe(GlobalPosition::START), None);
    let slow = collect(store.subscribe(GlobalPosition::START), Some(100));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = new_stream();
                for v in 0..APPENDS {
                    append_one(&store, stream, v, &format!("w{w}-{v}")).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = collect(store.subscribe(GlobalPosition::START), None);
    for w in writers {
        w.await.unwrap();
    }
    let all: Vec<_> = read_expecting(&store, total)
        .await
        .iter()
        .map(|e| e.event_id)
        .collect();
    for (name, sub) in [("fast", fast), ("slow", slow), ("late", late)] {
        let got: Vec<_> = sub.await.unwrap().iter().map(|e| e.event_id).collect();
        assert_eq!(got, all, "the {name} subscriber saw every event once, in order");
    }
}

pub async fn verify_names_the_tampered_event<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let (a, b) = (new_stream(), new_stream());
    for v in 0..3 {
        append_one(&store, a, v, &format!("tenant-alpha-{v}"))
            .await
            .unwrap();
        append_one(&store, b, v, &format!("tenant-bravo-{v}"))
            .await
            .unwrap();
    }
    assert!(store.verify(VerifyScope::All).await.unwrap().is_intact());
    let victim = store.read_stream(a, StreamVersion(2)).await.unwrap()[0].clone();
    // One byte: 'a' (0x61) becomes 'A' (0x41) inside a string of the payload.
    fx.tamper_payload(a, StreamVersion(2), "tenant-alpha-1", "tenant-Alpha-1")
        .await;
    let tampered = store.read_stream(a, StreamVersion(2)).await.unwrap()[0].clone();
    assert_ne!(
        tampered.payload, victim.payload,
        "the fixture changed the payload"
    );

    for scope in [VerifyScope::Stream(a), VerifyScope::All] {
        let report = store.verify(scope).await.expect("verify runs");
        let brk = report.first_break.expect("verify finds the tampering");
        assert_eq!(brk.stream, a);
        assert_eq!(brk.version, StreamVersion(2));
        assert_eq!(brk.event_id, victim.event_id);
        assert_eq!(brk.problem, ChainProblem::HashMismatch);
    }
    assert!(store.verify(VerifyScope::Stream(b)).await.unwrap().is_intact());
}

pub async fn secrets_are_never_at_rest_in_clear<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    let secret = format!("client-secret-{}", hex::encode(distinctive_bytes(12)));
    let edek = distinctive_bytes(256);
    let rewrapped = distinctive_bytes(256);
    let rewrap = NewEvent {
        event: Event::DataKeysRewrapped(DataKeysRewrapped {
            wrapped_by: WrappedBy::Provider {
                internal_key_id: "ik-1".into(),
            },
            data_keys: vec![RewrappedDataKey {
                dek_id: DekId(1),
                edek: Protected::Open(Edek(rewrapped.clone())),
            }],
        }),
        metadata: metadata(),
    };
    store
        .append(
            stream,
            StreamVersion::NONE,
            vec![cmk_enabled(&secret), dek_generated(&edek), rewrap],
            None,
        )
        .await
        .expect("append");

    let raw = fx.raw_bytes().await;
    assert!(
        raw.windows(16).any(|w| w == b"DataKeyGenerated"),
        "the fixture returned the stored bytes (the event type is there in clear)"
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std64 = base64::engine::general_purpose::STANDARD;
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("secret", secret.clone().into_bytes()),
        ("edek raw", edek.clone()),
        ("edek b64url", b64.encode(&edek).into_bytes()),
        ("edek b64", std64.encode(&edek).into_bytes()),
        ("edek hex", hex::encode(&edek).into_bytes()),
        ("rewrapped raw", rewrapped.clone()),
        ("rewrapped b64url", b64.encode(&rewrapped).into_bytes()),
    ];
    for (what, needle) in &needles {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{what} found in clear at rest"
        );
    }
    // Debug output of stored and opened events shows no secret either.
    let stored = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
    let opened: Vec<Event> = stored.iter().map(|e| store.open(e).unwrap()).collect();
    let debug = format!("{stored:?}{opened:?}");
    assert!(!debug.contains(&secret));
    // They open to the original values.
    match &opened[0] {
        Event::CustomerManagedKeyEnabled(e) => assert_eq!(
            e.connection
                .client_secret
                .open()
                .map(|s| s.expose_secret().to_owned()),
            Some(secret.clone())
        ),
        other => panic!("unexpected {}", other.event_type()),
    }
    match &opened[1] {
        Event::DataKeyGenerated(e) => assert_eq!(e.edek.open().map(|k| k.0.clone()), Some(edek.clone())),
        other => panic!("unexpected {}", other.event_type()),
    }
    match &opened[2] {
        Event::DataKeysRewrapped(e) => {
            assert_eq!(
                e.data_keys[0].edek.open().map(|k| k.0.clone()),
                Some(rewrapped.clone())
            )
        }
        other => panic!("unexpected {}", other.event_type()),
    }
}

pub async fn wrong_or_missing_internal_key_is_a_typed_error<F: Fixture>() {
    let ring = ring();
    let Some(fx) = F::create(ring.clone()).await else {
        return;
    };
    let store = fx.store();
    let stream = new_stream();
    store
        .append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("t"), cmk_enabled("s3cret-value")],
            None,
        )
        .await
        .unwrap();
    let target = store.read_stream(stream, StreamVersion(2)).await.unwrap()[0].clone();

    // Missing: a ring without the sealing key.
    let missing = fx.reopen(Arc::new(KeyRing::generate())).await;
    let stored = missing.read_stream(stream, StreamVersion::NONE).await.unwrap();
    assert!(
        missing.open(&stored[0]).is_ok(),
        "events without protected fields still open"
    );
    match missing.open(&stored[1]) {
        Err(StoreError::Open {
            stream: s,
            version,
            event_id,
            field,
            source: OpenError::UnknownKey { kid },
        }) => {
            assert_eq!(
                (s, version, event_id),
                (stream, StreamVersion(2), target.event_id)
            );
            assert_eq!(field, "connection.client_secret");
            assert_eq!(kid, ring.newest().kid());
        }
        other => panic!("expected a missing-key error, got {other:?}"),
    }

    // Wrong: a key with the same id and other material.
    let impostor = crate::InternalKey::from_secret(
        ring.newest().kid().to_owned(),
        chrono::Utc::now(),
        &SecretBox::new(Box::new([7u8; 32])),
    );
    let wrong = fx
        .reopen(Arc::new(KeyRing::from_keys(vec![impostor]).expect("one key")))
        .await;
    let err = wrong.open(&stored[1]).unwrap_err();
    assert!(
        matches!(err, StoreError::Open { source: OpenError::Authentication { .. }, event_id, .. } if event_id == target.event_id),
        "{err:?}"
    );
    assert!(!format!("{err:?}{err}").contains("s3cret-value"));
}

pub async fn rotated_key_ring_opens_old_and_seals_with_newest<F: Fixture>() {
    let ring = ring();
    let Some(fx) = F::create(ring.clone()).await else {
        return;
    };
    let stream = new_stream();
    fx.store()
        .append(stream, StreamVersion::NONE, vec![cmk_enabled("old-secret")], None)
        .await
        .unwrap();
    let old_kid = ring.newest().kid().to_owned();
    let old_key = crate::InternalKey::from_secret(
        old_kid.clone(),
        ring.newest().created_at(),
        // Invariant: the test reads its own ring's material through the public file format.
        &material_of(&ring),
    );
    let mut rotated = KeyRing::from_keys(vec![old_key]).expect("one key");
    let new_kid = rotated.rotate().to_owned();
    let store = fx.reopen(Arc::new(rotated)).await;
    store
        .append(stream, StreamVersion(1), vec![dek_generated(&[1u8; 64])], None)
        .await
        .unwrap();
    let events = store.read_stream(stream, StreamVersion::NONE).await.unwrap();
    let kid_of = |e: &StoredEvent| -> String {
        let mut event = e.decode().unwrap();
        let mut kid = String::new();
        event
            .for_each_protected(|_, slot| kid = slot.sealed_box().map(|b| b.kid.clone()).unwrap_or_default());
        kid
    };
    assert_eq!(kid_of(&events[0]), old_kid);
    assert_eq!(kid_of(&events[1]), new_kid);
    for e in &events {
        store.open(e).expect("every key of the ring opens");
    }
}

fn material_of(ring: &KeyRing) -> SecretBox<[u8; 32]> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ring.json");
    ring.save(&path).expect("save ring");
    let text = std::fs::read_to_string(&path).expect("read ring");
    let v: serde_json::Value = serde_json::from_str(&text).expect("ring json");
    let key = v["keys"][0]["key"].as_str().expect("key field");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .expect("base64");
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    SecretBox::new(Box::new(out))
}

pub async fn unknown_type_or_future_version_is_a_typed_error<F: Fixture>() {
    let Some(fx) = fixture::<F>().await else { return };
    let store = fx.store();
    let stream = new_stream();
    store
        .append(
            stream,
            StreamVersion::NONE,
            vec![tenant_added("a"), tenant_added("b")],
            None,
        )
        .await
        .unwrap();
    fx.rewrite_type(stream, StreamVersion(1), "KeyStolen", 1).await;
    fx.rewrite_type(stream, StreamVersion(2), "TenantAdded", 99).await;
    // Reading the envelopes works; decoding names the event.
    let events = store
        .read_stream(stream, StreamVersion::NONE)
        .await
        .expect("reads do not fail");
    read_expecting(&store, 2).await;
    match store.open(&events[0]) {
        Err(StoreError::Decode {
            stream: s,
            version,
            event_id,
            source: DecodeError::UnknownEventType { event_type },
        }) => {
            assert_eq!(
                (s, version, event_id),
                (stream, StreamVersion(1), events[0].event_id)
            );
            assert_eq!(event_type, "KeyStolen");
        }
        other => panic!("expected an unknown-type error, got {other:?}"),
    }
    match store.open(&events[1]) {
        Err(StoreError::Decode {
            stream: s,
            version,
            event_id,
            source: DecodeError::FutureSchemaVersion { found: 99, .. },
        }) => assert_eq!(
            (s, version, event_id),
            (stream, StreamVersion(2), events[1].event_id)
        ),
        other => panic!("expected a future-version error, got {other:?}"),
    }
    // The chain shows the rewrite too.
    assert!(
        !store
            .verify(VerifyScope::Stream(stream))
            .await
            .unwrap()
            .is_intact()
    );
}

// ---------------------------------------------------------------------------------------------
// Import

/// A populated log: two streams written in turns, sealed fields, command ids (one append of
/// three events under one command id). Returns the whole log in global order.
async fn populate_for_export<S: EventStore + ?Sized>(store: &S, secret: &str) -> Vec<StoredEvent> {
    let (a, b) = (new_stream(), new_stream());
    store
        .append(
            a,
            StreamVersion::NONE,
            vec![tenant_added("alpha-0"), cmk_enabled(secret)],
            Some(CommandId::parse("export-cmd-a1").unwrap()),
        )
        .await
        .unwrap();
    append_one(store, b, 0, "bravo-0").await.unwrap();
    store
        .append(
            a,
            StreamVersion(2),
            vec![
                dek_generated(&distinctive_bytes(48)),
                tenant_added("alpha-3"),
                tenant_added("alpha-4"),
            ],
            Some(CommandId::parse("export-cmd-a2").unwrap()),
        )
        .await
        .unwrap();
    for v in 1..4 {
        append_one(store, b, v, &format!("bravo-{v}")).await.unwrap();
    }
    read_expecting(store, 9).await
}

/// The fields an import keeps: everything but the global position.
fn without_position(events: &[StoredEvent]) -> Vec<StoredEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.global_position = GlobalPosition::START;
            e
        })
        .collect()
}

/// How many events the store holds, committed, whatever a reader fence holds back.
async fn stored_count<S: EventStore + ?Sized>(store: &S) -> u64 {
    store
        .verify(VerifyScope::All)
        .await
        .expect("verify")
        .events_checked
}

pub async fn import_round_trips_an_export<F: Fixture>() {
    let ring = ring();
    let Some(source) = F::create(ring.clone()).await else {
        return;
    };
    let secret = format!("client-secret-{}", hex::encode(distinctive_bytes(8)));
    let exported = populate_for_export(&source.store(), &secret).await;
    let Some(target) = F::create(ring.clone()).await else {
        return;
    };
    let store = target.store();
    // Batches of 4 split the three-event command and continue streams across batches.
    let mut imported = 0;
    for (i, chunk) in exported.chunks(4).enumerate() {
        let batch = if i == 0 {
            ImportBatch::First
        } else {
            ImportBatch::Next
        };
        imported += store.import(chunk.to_vec(), batch).await.expect("import");
    }
    assert_eq!(imported, exported.len());

    let read = read_expecting(&store, exported.len()).await;
    assert_eq!(
        without_position(&read),
        without_position(&exported),
        "every field but the position is kept, in the same order"
    );
    assert!(
        read.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let report = store.verify(VerifyScope::All).await.expect("verify");
    assert!(report.is_intact());
    assert_eq!(report.events_checked, u64::try_from(exported.len()).unwrap());
    // The same key ring opens every imported event to the same values.
    for (imported, original) in read.iter().zip(&exported) {
        let opened = store.open(imported).expect("open an imported event");
        let before = source.store().open(original).expect("open the original");
        assert_eq!(format!("{opened:?}"), format!("{before:?}"));
        if let Event::CustomerManagedKeyEnabled(e) = &opened {
            assert_eq!(
                e.connection
                    .client_secret
                    .open()
                    .map(|s| s.expose_secret().to_owned()),
                Some(secret.clone())
            );
        }
    }
    assert!(
        read.iter().any(|e| e.event_type == "CustomerManagedKeyEnabled"),
        "the log has a sealed secret"
    );

    // Command ids keep working: a repeat returns the imported result, with the new positions.
    let stream_a = exported[0].stream_id;
    let at = |version: u64| {
        read.iter()
            .find(|e| e.stream_id == stream_a && e.stream_version == StreamVersion(version))
            .map(|e| e.global_position)
            .expect("imported event")
    };
    let repeat = store
        .append(
            stream_a,
            StreamVersion(5),
            vec![tenant_added("never")],
            Some(CommandId::parse("export-cmd-a2").unwrap()),
        )
        .await
        .expect("repeat");
    assert_eq!(
        repeat,
        crate::AppendResult {
            stream: stream_a,
            first_version: StreamVersion(3),
            last_version: StreamVersion(5),
            first_position: at(3),
            last_position: at(5),
            repeat: true,
        }
    );
    let repeat = store
        .append(
            stream_a,
            StreamVersion::NONE,
            vec![tenant_added("never")],
            Some(CommandId::parse("export-cmd-a1").unwrap()),
        )
        .await
        .expect("repeat");
    assert_eq!(
        (repeat.first_version, repeat.last_version),
        (StreamVersion(1), StreamVersion(2))
    );
    assert_eq!(
        stored_count(&store).await,
        u64::try_from(exported.len()).unwrap(),
        "repeats append nothing"
    );
    // And the streams go on.
    let next = append_one(&store, stream_a, 5, "alpha-5")
        .await
        .expect("append after import");
    assert_eq!(next.first_version, StreamVersion(6));
    assert!(store.verify(VerifyScope::All).await.unwrap().is_intact());
}

pub async fn import_refuses_a_non_empty_store<F: Fixture>() {
    let Some(source) = fixture::<F>().await else {
        return;
    };
    let exported = populate_for_export(&source.store(), "s").await;
    let Some(target) = fixture::<F>().await else {
        return;
    };
    let store = target.store();
    assert_eq!(
        store
            .import(vec![], ImportBatch::First)
            .await
            .expect("empty store"),
        0
    );
    append_one(&store, new_stream(), 0, "already here").await.unwrap();
    for events in [vec![], exported.clone()] {
        let err = store.import(events, ImportBatch::First).await.unwrap_err();
        assert!(matches!(err, StoreError::ImportTargetNotEmpty), "{err:?}");
    }
    assert_eq!(stored_count(&store).await, 1, "nothing was imported");
}

pub async fn import_rejects_a_tampered_envelope_and_stores_nothing<F: Fixture>() {
    let Some(source) = fixture::<F>().await else {
        return;
    };
    let exported = populate_for_export(&source.store(), "s").await;
    let Some(target) = fixture::<F>().await else {
        return;
    };
    let store = target.store();
    // One byte of one payload, in the middle of the batch.
    let mut events = exported.clone();
    let victim = events
        .iter()
        .position(|e| e.payload.to_string().contains("alpha-3"))
        .expect("victim");
    let text = events[victim].payload.to_string().replace("alpha-3", "alpha-8");
    events[victim].payload = serde_json::from_str(&text).unwrap();
    let err = store
        .import(events, ImportBatch::First)
        .await
        .expect_err("a tampered envelope is refused");
    match err {
        StoreError::ImportRejected {
            stream,
            version,
            event_id,
            problem,
        } => {
            let v = &exported[victim];
            assert_eq!(
                (stream, version, event_id),
                (v.stream_id, v.stream_version, v.event_id)
            );
            assert_eq!(problem, ChainProblem::HashMismatch);
            let message = StoreError::ImportRejected {
                stream,
                version,
                event_id,
                problem,
            }
            .to_string();
            for part in [stream.to_string(), version.to_string(), event_id.to_string()] {
                assert!(message.contains(&part), "{message} names {part}");
            }
        }
        other => panic!("expected an import rejection, got {other:?}"),
    }
    assert_eq!(stored_count(&store).await, 0, "nothing of the batch was stored");
    // The intact export still imports.
    store
        .import(exported.clone(), ImportBatch::First)
        .await
        .expect("import");
    assert_eq!(stored_count(&store).await, u64::try_from(exported.len()).unwrap());
}

pub async fn import_rejects_a_gap_or_a_broken_chain<F: Fixture>() {
    let Some(source) = fixture::<F>().await else {
        return;
    };
    let exported = populate_for_export(&source.store(), "s").await;
    let stream_b = exported[2].stream_id;
    let of_b = |v: u64| {
        exported
            .iter()
            .position(|e| e.stream_id == stream_b && e.stream_version == StreamVersion(v))
            .expect("event of b")
    };

    // A gap: version 2 of b is missing.
    let mut gap = exported.clone();
    gap.remove(of_b(2));
    // A broken chain: version 3 of b points elsewhere, with a hash that matches its content.
    let mut broken = exported.clone();
    let e = &mut broken[of_b(3)];
    e.prev_hash = exported[0].hash.clone();
    e.hash = crate::envelope_hash(e);

    for (events, version, problem) in [
        (gap, 3, ChainProblem::VersionGap),
        (broken, 3, ChainProblem::PrevHashMismatch),
    ] {
        let Some(target) = fixture::<F>().await else {
            return;
        };
        let store = target.store();
        // The good first part goes in first; the bad event comes in a later batch.
        let (head, tail) = events.split_at(3);
        store
            .import(head.to_vec(), ImportBatch::First)
            .await
            .expect("first batch");
        match store.import(tail.to_vec(), ImportBatch::Next).await {
            Err(StoreError::ImportRejected {
                stream,
                version: v,
                event_id,
                problem: p,
            }) => {
                assert_eq!((stream, v, p), (stream_b, StreamVersion(version), problem));
                assert_eq!(event_id, exported[of_b(version)].event_id);
            }
            other => panic!("expected {problem:?}, got {other:?}"),
        }
        assert_eq!(stored_count(&store).await, 3, "only the first batch was stored");
    }
}

// ---------------------------------------------------------------------------------------------
// The in-memory backend's fixture

/// The conformance fixture of [`InMemoryStore`].
#[derive(Debug)]
pub struct MemoryFixture {
    store: InMemoryStore,
}

#[async_trait]
impl Fixture for MemoryFixture {
    type Store = InMemoryStore;

    async fn create(ring: Arc<KeyRing>) -> Option<Self> {
        Some(Self {
            store: InMemoryStore::new(ring),
        })
    }

    fn store(&self) -> InMemoryStore {
        self.store.clone()
    }

    async fn reopen(&self, ring: Arc<KeyRing>) -> InMemoryStore {
        self.store.with_key_ring(ring)
    }

    async fn tamper_payload(&self, stream: StreamId, version: StreamVersion, from: &str, to: &str) {
        self.store.tamper(stream, version, |e| {
            let text = e.payload.to_string().replace(from, to);
            e.payload = serde_json::from_str(&text).expect("still JSON");
        });
    }

    async fn rewrite_type(
        &self,
        stream: StreamId,
        version: StreamVersion,
        event_type: &str,
        schema_version: u32,
    ) {
        self.store.tamper(stream, version, |e| {
            e.event_type = event_type.to_owned();
            e.schema_version = schema_version;
        });
    }

    async fn raw_bytes(&self) -> Vec<u8> {
        self.store.raw_bytes()
    }
}

/// Stored envelopes for `events` on the scenario's stream, positions and versions from 1, with
/// protected fields "sealed" by a fixed XOR (tests only: not encryption) and no hash chain.
/// For tests of code that reads stored events (projections) without a store.
pub fn envelopes(events: Vec<Event>) -> Vec<StoredEvent> {
    use keyledger_domain::testing::{admin, at_minutes, org_id};
    use keyledger_domain::{Actor, GlobalPosition, StreamId, StreamVersion};
    let stream = StreamId::for_org(org_id());
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            event.for_each_protected(|_, slot| {
                if let Some(clear) = slot.clear_bytes() {
                    slot.set_sealed(keyledger_domain::secret::SealedBox {
                        kid: "test-xor".into(),
                        aad: keyledger_domain::secret::AadScheme::V1,
                        nonce: vec![0; 12],
                        ct: clear.iter().map(|b| b ^ 0x5A).collect(),
                    });
                }
            });
            let n = i as u64 + 1;
            let actor = match event.event_type() {
                "KeyHealthChanged" => Actor::system(),
                _ => admin(),
            };
            StoredEvent {
                event_id: format!("01900000-0000-7000-9000-{n:012x}")
                    .parse()
                    .expect("fixture id"),
                stream_id: stream,
                stream_version: StreamVersion(n),
                global_position: GlobalPosition(n),
                event_type: event.event_type().into(),
                schema_version: event.schema_version(),
                occurred_at: at_minutes(i64::try_from(i).expect("a short history")),
                actor: EnvelopeActor::from_actor(&actor, None),
                command_id: None,
                correlation_id: None,
                causation_id: None,
                payload: event.payload_json().expect("sealed events serialize"),
                prev_hash: String::new(),
                hash: String::new(),
            }
        })
        .collect()
}
