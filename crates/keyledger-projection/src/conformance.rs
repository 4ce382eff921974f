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
    // The organizations with a document: the one folded; none past a limit of 0, none in the
    // audit tree (it keeps no documents).
    assert_eq!(
        sink.organizations(Projection::OrganizationEncryption, 10)
            .await
            .unwrap(),
        [testing::org_id()]
    );
    assert!(
        sink.organizations(Projection::OrganizationEncryption, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        sink.organizations(Projection::AuditTree, 10)
            .await
            .unwrap()
            .is_empty()
    );
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

/// The audit-tree suite (ADR 0024), mounted with [`tree_conformance!`](crate::tree_conformance)
/// for every backend whose projection sink also reads the trees.
pub mod tree {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use keyledger_domain::{GlobalPosition, OrgId, StreamId, StreamVersion};
    use keyledger_store::conformance::tenant_added;
    use keyledger_store::merkle::{
        AuditLog, AuditTrees, Frontier, Hash, TreeChanges, TreeNode, event_leaf_hash, leaf_hash, reference,
        root, verify_consistency, verify_inclusion,
    };
    use keyledger_store::{EventStore, StoredEvent};

    use crate::{Changes, Projection, ProjectionSink, Runner, SinkError};

    /// Appends `count` events spread unevenly over three new organizations; returns them and
    /// the last position appended (a PostgreSQL `read_all` may not show it yet while another
    /// transaction on the server is open).
    async fn appended(store: &dyn EventStore, count: u64) -> (Vec<OrgId>, u64) {
        let orgs = [OrgId::new_v7(), OrgId::new_v7(), OrgId::new_v7()];
        let mut versions = [0u64; 3];
        let mut last = 0;
        for i in 0..count {
            let which = match i % 7 {
                0 | 3 | 5 => 0,
                1 | 4 => 1,
                _ => 2,
            };
            let appended = store
                .append(
                    StreamId::for_org(orgs[which]),
                    StreamVersion(versions[which]),
                    vec![tenant_added(&format!("tenant {i}"))],
                    None,
                )
                .await
                .unwrap();
            versions[which] += 1;
            last = last.max(appended.last_position.0);
        }
        (orgs.to_vec(), last)
    }

    async fn all_events(store: &dyn EventStore) -> Vec<StoredEvent> {
        store.read_all(GlobalPosition(0), usize::MAX).await.unwrap()
    }

    /// The leaf hashes of every log, computed from the events as read back from the store.
    async fn reference_leaves(store: &dyn EventStore, orgs: &[OrgId]) -> BTreeMap<AuditLog, Vec<Hash>> {
        let mut logs = BTreeMap::new();
        let global = all_events(store).await.iter().map(event_leaf_hash).collect();
        logs.insert(AuditLog::Global, global);
        for org in orgs {
            let events = store
                .read_stream(StreamId::for_org(*org), StreamVersion(1))
                .await
                .unwrap();
            logs.insert(AuditLog::Org(*org), events.iter().map(event_leaf_hash).collect());
        }
        logs
    }

    /// Folds the log into the tree until its checkpoint reaches `last`.
    async fn fold(store: Arc<dyn EventStore>, sink: Arc<dyn ProjectionSink>, batch: usize, last: u64) -> u64 {
        let runner = Runner::new(store, sink, Projection::AuditTree).with_batch(batch);
        assert!(
            runner
                .catch_up_to(last, std::time::Duration::from_secs(30))
                .await
                .unwrap()
        );
        last
    }

    /// Every root of every size, and the leaf hashes, of every log.
    async fn snapshot(trees: &dyn AuditTrees) -> BTreeMap<AuditLog, (Vec<Hash>, Vec<Hash>)> {
        let mut out = BTreeMap::new();
        for (log, size) in trees.tree_sizes().await.unwrap() {
            let mut roots = Vec::new();
            for n in 0..=size {
                roots.push(trees.root(log, n).await.unwrap());
            }
            out.insert(log, (roots, trees.leaf_hashes(log, 0, size).await.unwrap()));
        }
        out
    }

    /// Roots, inclusion proofs and consistency proofs of the global and organization logs
    /// equal the RFC 9162 reference computed from the full leaf lists of the store, and verify.
    pub async fn roots_and_proofs_equal_the_reference(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        trees: Arc<dyn AuditTrees>,
    ) {
        let (orgs, last) = appended(store.as_ref(), 45).await;
        fold(store.clone(), sink, 6, last).await;
        let expected = reference_leaves(store.as_ref(), &orgs).await;
        let sizes = trees.tree_sizes().await.unwrap();
        assert_eq!(sizes.len(), 4, "{sizes:?}");
        for (log, leaves) in &expected {
            let size = u64::try_from(leaves.len()).unwrap();
            assert_eq!(sizes[log], size, "{log}");
            assert_eq!(trees.tree_size(*log).await.unwrap(), size);
            assert_eq!(&trees.leaf_hashes(*log, 0, size).await.unwrap(), leaves);
            for n in 1..=leaves.len() {
                let tree = &leaves[..n];
                let n64 = u64::try_from(n).unwrap();
                let r = trees.root(*log, n64).await.unwrap();
                assert_eq!(r, root(tree), "root of {log} at {n}");
                for (m, leaf) in (0u64..).zip(tree) {
                    let p = trees.inclusion_proof(*log, m, n64).await.unwrap();
                    assert_eq!(p, reference::inclusion_proof(usize::try_from(m).unwrap(), tree));
                    verify_inclusion(leaf, m, n64, &p, &r).unwrap();
                }
                for m in 1..=n {
                    let m64 = u64::try_from(m).unwrap();
                    let p = trees.consistency_proof(*log, m64, n64).await.unwrap();
                    assert_eq!(p, reference::consistency_proof(m, tree));
                    verify_consistency(m64, n64, &root(&leaves[..m]), &r, &p).unwrap();
                }
            }
            // Past the tree: a typed error.
            assert!(trees.root(*log, size + 1).await.is_err());
            assert!(trees.inclusion_proof(*log, size, size).await.is_err());
        }
    }

    /// Resetting and folding again from position 0 (as `projections rebuild` does), with
    /// other batch sizes, gives the same nodes.
    pub async fn a_rebuild_gives_the_same_nodes(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        trees: Arc<dyn AuditTrees>,
    ) {
        let (_, last) = appended(store.as_ref(), 30).await;
        fold(store.clone(), sink.clone(), 1, last).await;
        let before = snapshot(trees.as_ref()).await;
        assert_eq!(before.len(), 4);
        let runner = Runner::new(store.clone(), sink.clone(), Projection::AuditTree).with_batch(8);
        runner.rebuild(|_| {}).await.unwrap();
        assert_eq!(snapshot(trees.as_ref()).await, before);
        sink.reset(Projection::AuditTree).await.unwrap();
        assert!(trees.tree_sizes().await.unwrap().is_empty());
        assert_eq!(sink.checkpoint(Projection::AuditTree).await.unwrap(), 0);
        // More events later: the live fold continues the logs where the rebuild left them.
        fold(store.clone(), sink.clone(), 1000, last).await;
        let (_, last) = appended(store.as_ref(), 5).await;
        fold(store.clone(), sink.clone(), 2, last).await;
        let live = snapshot(trees.as_ref()).await;
        assert_eq!(live[&AuditLog::Global].1.len(), 35);
        Runner::new(store, sink, Projection::AuditTree)
            .rebuild(|_| {})
            .await
            .unwrap();
        assert_eq!(snapshot(trees.as_ref()).await, live);
    }

    /// Nodes and frontiers are written with the checkpoint, all or nothing: a stale commit or
    /// one that repeats a stored node changes neither.
    pub async fn tree_nodes_commit_with_the_checkpoint(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn ProjectionSink>,
        trees: Arc<dyn AuditTrees>,
    ) {
        let (_, last) = appended(store.as_ref(), 12).await;
        let checkpoint = fold(store.clone(), sink.clone(), 5, last).await;
        let before = snapshot(trees.as_ref()).await;
        let log = AuditLog::Global;
        let size = trees.tree_size(log).await.unwrap();
        let mut head = sink.tree_heads(&[log]).await.unwrap().remove(&log).unwrap();
        assert_eq!(head.size(), size);
        assert_eq!(head.root(), trees.root(log, size).await.unwrap());
        let mut nodes = Vec::new();
        head.append(leaf_hash(b"not an event"), |addr, hash| {
            nodes.push(TreeNode { log, addr, hash });
        });
        let grown = TreeChanges {
            nodes: nodes.clone(),
            heads: [(log, head.clone())].into(),
        };
        // Stale: the checkpoint does not move forward.
        let stale = Changes {
            tree: grown.clone(),
            checkpoint,
            ..Changes::default()
        };
        assert!(matches!(
            sink.commit(Projection::AuditTree, stale).await,
            Err(SinkError::Superseded { .. })
        ));
        // A node stored already (leaf 0) fails the commit whole.
        let mut repeated = grown.clone();
        let first = trees.leaf_hashes(log, 0, 1).await.unwrap()[0];
        repeated.nodes.push(TreeNode {
            log,
            addr: keyledger_store::merkle::NodeAddr::leaf(0),
            hash: first,
        });
        let failing = Changes {
            tree: repeated,
            checkpoint: checkpoint + 1,
            ..Changes::default()
        };
        assert!(sink.commit(Projection::AuditTree, failing).await.is_err());
        assert_eq!(sink.checkpoint(Projection::AuditTree).await.unwrap(), checkpoint);
        assert_eq!(snapshot(trees.as_ref()).await, before);
        let heads = sink.tree_heads(&[log]).await.unwrap();
        assert_eq!(heads[&log].size(), size);
        // The same changes, well formed, go in with the checkpoint.
        let ok = Changes {
            tree: grown,
            checkpoint: checkpoint + 1,
            ..Changes::default()
        };
        sink.commit(Projection::AuditTree, ok).await.unwrap();
        assert_eq!(trees.tree_size(log).await.unwrap(), size + 1);
        assert_eq!(
            sink.checkpoint(Projection::AuditTree).await.unwrap(),
            checkpoint + 1
        );
        let unknown: Frontier = sink
            .tree_heads(&[AuditLog::Org(OrgId::new_v7())])
            .await
            .unwrap()
            .into_values()
            .next()
            .unwrap_or_default();
        assert_eq!(unknown.size(), 0);
    }
}

/// Mounts the audit-tree suite: `tree_conformance!(async_factory)` where the factory returns
/// `Option<(Arc<dyn EventStore>, Arc<dyn ProjectionSink>, Arc<dyn AuditTrees>, guard)>`, the
/// sink and the trees being the same backend's; `None` skips the test.
#[macro_export]
macro_rules! tree_conformance {
    ($factory:expr) => {
        #[tokio::test]
        async fn tree_roots_and_proofs_equal_the_reference() {
            let Some((store, sink, trees, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::tree::roots_and_proofs_equal_the_reference(store, sink, trees).await;
        }
        #[tokio::test]
        async fn tree_a_rebuild_gives_the_same_nodes() {
            let Some((store, sink, trees, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::tree::a_rebuild_gives_the_same_nodes(store, sink, trees).await;
        }
        #[tokio::test]
        async fn tree_nodes_commit_with_the_checkpoint() {
            let Some((store, sink, trees, _guard)) = $factory().await else {
                return;
            };
            $crate::conformance::tree::tree_nodes_commit_with_the_checkpoint(store, sink, trees).await;
        }
    };
}
