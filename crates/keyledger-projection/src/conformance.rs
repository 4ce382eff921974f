//! The projection-sink conformance suite (feature `conformance`): written once, mounted for the
//! memory, SQLite and PostgreSQL sinks with [`sink_conformance!`](crate::sink_conformance).

use std::sync::Arc;

use keyledger_domain::testing::{self, History};
use keyledger_domain::{GlobalPosition, OrgId, StreamId, StreamVersion};
use keyledger_store::envelope::{EnvelopeActor, EventMetadata};
use keyledger_store::{EventStore, NewEvent};

use crate::{AuditQuery, Changes, Projection, ProjectionSink, Runner};

/// Appends a history's events to the scenario's stream, one append per event.
pub async fn append_history(store: &dyn EventStore, history: History) {
    let stream = StreamId::for_org(testing::org_id());
    for (i, event) in history.events().into_iter().enumerate() {
        let metadata = EventMetadata {
            occurred_at: testing::at_minutes(i64::try_from(i).expect("a Vec index fits in i64")),
            actor: EnvelopeActor::from_actor(&testing::admin(), None),
            correlation_id: None,
            causation_id: None,
        };
        store
            .append(
                stream,
                StreamVersion(u64::try_from(i).expect("usize fits in u64")),
                vec![NewEvent { event, metadata }],
                None,
            )
            .await
            .unwrap();
    }
}

/// Folds a realistic history through a runner into `sink`.
async fn folded(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) {
    append_history(
        store.as_ref(),
        testing::cmk_org().rotate(&testing::key_b()).switch(),
    )
    .await;
    let stream = StreamId::for_org(testing::org_id());
    let last = store
        .read_stream(stream, StreamVersion(1))
        .await
        .unwrap()
        .last()
        .unwrap()
        .global_position
        .0;
    for p in Projection::ALL {
        let runner = Runner::new(store.clone(), sink.clone(), p).with_batch(3);
        assert!(
            runner
                .catch_up_to(last, std::time::Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
}

/// Commits move the checkpoint with the rows; loads see them.
pub async fn commits_rows_and_checkpoint_together(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) {
    folded(store.clone(), sink.clone()).await;
    let last = store
        .read_all(GlobalPosition(0), usize::MAX)
        .await
        .unwrap()
        .last()
        .unwrap()
        .global_position
        .0;
    for p in Projection::ALL {
        assert_eq!(sink.checkpoint(p).await.unwrap(), last, "{}", p.name());
    }
    let docs = sink
        .load(Projection::OrganizationEncryption, &[testing::org_id()])
        .await
        .unwrap();
    let view: crate::OrganizationView = serde_json::from_value(docs[&testing::org_id()].clone()).unwrap();
    assert_eq!(view.key_history.len(), 2);
    // A document deleted by the fold is gone (key health ends with the switch).
    assert!(
        sink.load(Projection::KeyHealth, &[testing::org_id()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// A commit that fails part-way writes nothing and keeps the checkpoint.
pub async fn a_failed_commit_writes_nothing(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) {
    folded(store, sink.clone()).await;
    let checkpoint = sink.checkpoint(Projection::TenantAudit).await.unwrap();
    let org: OrgId = testing::other_org_id();
    let row = crate::AuditEntry {
        id: "dup".into(),
        tenant_id: testing::tenant_a().tenant_id,
        org_id: testing::org_id(),
        occurred_at: testing::t0(),
        actor: crate::AuditActor {
            kind: keyledger_domain::ActorKind::User,
            id: "x".into(),
        },
        action: "CustomerManagedKeyEnabled".into(),
        details: serde_json::json!({}),
        event_id: "01900000-0000-7000-9000-000000000003".parse().unwrap(),
        position: 1,
    };
    let before = serde_json::json!({"tenants": []});
    // Store the audit row and a document once, one position further.
    let checkpoint = checkpoint + 1;
    let mut first = Changes {
        checkpoint,
        ..Changes::default()
    };
    first.docs.insert(org, Some(before.clone()));
    first.audit = vec![row.clone()];
    sink.commit(Projection::TenantAudit, first).await.unwrap();
    // A commit that changes the document but repeats the row's key must fail whole.
    let mut failing = Changes {
        checkpoint: checkpoint + 1_000_000,
        ..Changes::default()
    };
    failing
        .docs
        .insert(org, Some(serde_json::json!({"tenants": ["changed"]})));
    failing.audit = vec![row];
    assert!(sink.commit(Projection::TenantAudit, failing).await.is_err());
    assert_eq!(
        sink.checkpoint(Projection::TenantAudit).await.unwrap(),
        checkpoint
    );
    let doc = sink.load(Projection::TenantAudit, &[org]).await.unwrap();
    assert_eq!(doc.get(&org), Some(&before));
}

/// A commit whose checkpoint is not past the stored one is refused whole (another runner got
/// there first): the checkpoint never moves backwards and the stale rows are not written.
pub async fn a_checkpoint_never_moves_backwards(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) {
    folded(store, sink.clone()).await;
    let p = Projection::OrganizationEncryption;
    let checkpoint = sink.checkpoint(p).await.unwrap();
    let org: OrgId = testing::other_org_id();
    let ahead = Changes {
        checkpoint: checkpoint + 10,
        docs: [(org, Some(serde_json::json!({"written": "ahead"})))].into(),
        ..Changes::default()
    };
    sink.commit(p, ahead).await.unwrap();
    for stale in [checkpoint + 10, checkpoint + 5, 1] {
        let behind = Changes {
            checkpoint: stale,
            docs: [(org, Some(serde_json::json!({"written": "behind"})))].into(),
            ..Changes::default()
        };
        match sink.commit(p, behind).await {
            Err(crate::SinkError::Superseded {
                checkpoint: at,
                attempted,
                ..
            }) => assert_eq!((at, attempted), (checkpoint + 10, stale)),
            other => panic!("a commit to {stale} after {}: {other:?}", checkpoint + 10),
        }
    }
    assert_eq!(sink.checkpoint(p).await.unwrap(), checkpoint + 10);
    let docs = sink.load(p, &[org]).await.unwrap();
    assert_eq!(docs[&org], serde_json::json!({"written": "ahead"}));
}

/// Reset empties a projection and zeroes its checkpoint; the others are untouched.
pub async fn reset_empties_one_projection(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>) {
    folded(store, sink.clone()).await;
    sink.reset(Projection::OrganizationEncryption).await.unwrap();
    assert_eq!(
        sink.checkpoint(Projection::OrganizationEncryption).await.unwrap(),
        0
    );
    assert!(
        sink.load(Projection::OrganizationEncryption, &[testing::org_id()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(sink.checkpoint(Projection::DataKeyInventory).await.unwrap() > 0);
}

/// Audit pages filter by tenant, position, action and time, and unknown tenants are told apart.
pub async fn audit_queries_filter_and_tenants_are_known(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
) {
    folded(store, sink.clone()).await;
    let tenant = testing::tenant_a().tenant_id;
    let all = sink.audit(&AuditQuery::all(tenant)).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "CustomerManagedKeyEnabled",
            "CustomerManagedKeyRotated",
            "SwitchedToProviderManagedKey"
        ]
    );
    let page = |after, limit| AuditQuery {
        after,
        limit,
        ..AuditQuery::all(tenant)
    };
    let first = sink.audit(&page(0, 1)).await.unwrap();
    assert_eq!(first, all[..1]);
    let rest = sink.audit(&page(first[0].position, 10)).await.unwrap();
    assert_eq!(rest, all[1..]);
    let rotated = AuditQuery {
        action: Some("CustomerManagedKeyRotated".into()),
        ..AuditQuery::all(tenant)
    };
    assert_eq!(sink.audit(&rotated).await.unwrap(), all[1..2]);
    // [since, until): the rotation's own time is in, the switch's is out.
    let window = AuditQuery {
        since: Some(all[1].occurred_at),
        until: Some(all[2].occurred_at),
        ..AuditQuery::all(tenant)
    };
    assert_eq!(sink.audit(&window).await.unwrap(), all[1..2]);
    assert!(sink.tenant_known(tenant).await.unwrap());
    assert!(sink.tenant_known(testing::tenant_b().tenant_id).await.unwrap());
    assert!(!sink.tenant_known(testing::tenant_id(77)).await.unwrap());
}

/// Mounts the suite: `sink_conformance!(async_factory)` where the factory returns
/// `Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, guard)>`; `None` skips the test (a
/// backend that is not available, as the store suite does).
#[macro_export]
macro_rules! sink_conformance {
    ($factory:expr) => {
        #[tokio::test]
        async fn commits_rows_and_checkpoint_together() {
            let Some((store, sink, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::commits_rows_and_checkpoint_together(store, sink).await;
        }
        #[tokio::test]
        async fn a_failed_commit_writes_nothing() {
            let Some((store, sink, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::a_failed_commit_writes_nothing(store, sink).await;
        }
        #[tokio::test]
        async fn a_checkpoint_never_moves_backwards() {
            let Some((store, sink, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::a_checkpoint_never_moves_backwards(store, sink).await;
        }
        #[tokio::test]
        async fn reset_empties_one_projection() {
            let Some((store, sink, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::reset_empties_one_projection(store, sink).await;
        }
        #[tokio::test]
        async fn audit_queries_filter_and_tenants_are_known() {
            let Some((store, sink, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::audit_queries_filter_and_tenants_are_known(store, sink).await;
        }
    };
}
