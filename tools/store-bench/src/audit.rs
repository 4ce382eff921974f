//! The audit tree's figures (issue 13): inclusion-proof latency on a 100,000-event
//! organization log, and append throughput at 32 writers with the `audit_tree` projection
//! folding live against none, on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger_domain::{OrgId, StreamId, StreamVersion};
use keyledger_projection::{Projection, ProjectionSink, Runner};
use keyledger_store::merkle::{AuditLog, AuditTrees, root, verify_inclusion};
use keyledger_store::{EventStore, StoredEvent};

use crate::{Args, Results, append_throughput, event};

/// Appends `n` events to one new organization's stream, 1000 per append.
async fn seed_org(store: &dyn EventStore, n: u64) -> OrgId {
    let org = OrgId::new_v7();
    let stream = StreamId::for_org(org);
    let mut version = 0;
    while version < n {
        let batch = (n - version).min(1000);
        let events = (0..batch)
            .map(|i| event(&format!("org-{}", version + i)))
            .collect();
        store
            .append(stream, StreamVersion(version), events, None)
            .await
            .expect("seed");
        version += batch;
    }
    org
}

/// Folds the tree up to position `end`; returns events folded per second (global leaves
/// added: positions may have gaps).
async fn fold(
    store: Arc<dyn EventStore>,
    sink: Arc<dyn ProjectionSink>,
    trees: &dyn AuditTrees,
    end: u64,
) -> f64 {
    let from = trees.tree_size(AuditLog::Global).await.expect("size");
    let start = Instant::now();
    let runner = Runner::new(store, sink, Projection::AuditTree);
    assert!(
        runner
            .catch_up_to(end, Duration::from_secs(600))
            .await
            .expect("fold")
    );
    let to = trees.tree_size(AuditLog::Global).await.expect("size");
    (to - from) as f64 / start.elapsed().as_secs_f64()
}

/// The `p`-th percentile (nearest rank below) of sorted, non-empty times.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// Inclusion proofs of random leaves of the whole org log (each read through the port: size,
/// then the nodes), timed one by one; every proof is checked against the reference root.
async fn proof_latency(
    name: &str,
    store: &dyn EventStore,
    trees: &dyn AuditTrees,
    org: OrgId,
    proofs: usize,
    out: &mut Results,
) {
    let log = AuditLog::Org(org);
    let size = trees.tree_size(log).await.expect("size");
    let events: Vec<StoredEvent> = store
        .read_stream(StreamId::for_org(org), StreamVersion(1))
        .await
        .expect("read");
    let leaves: Vec<_> = events
        .iter()
        .map(keyledger_store::merkle::event_leaf_hash)
        .collect();
    assert_eq!(u64::try_from(leaves.len()).expect("fits"), size);
    let expected_root = root(&leaves);
    assert_eq!(trees.root(log, size).await.expect("root"), expected_root);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut times = Vec::with_capacity(proofs);
    for _ in 0..proofs {
        // xorshift: a spread of indexes without another dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = state % size;
        let t = Instant::now();
        let proof = trees.inclusion_proof(log, index, size).await.expect("proof");
        times.push(t.elapsed());
        let leaf = &leaves[usize::try_from(index).expect("fits")];
        verify_inclusion(leaf, index, size, &proof, &expected_root).expect("the proof verifies");
    }
    times.sort();
    out.add(format!(
        "{name}: inclusion proof on a {size}-event organization log, {proofs} proofs: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        percentile(&times, 50).as_secs_f64() * 1e6,
        percentile(&times, 99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    ));
}

/// Append throughput at 32 writers without the tree runner, then with it following live; the
/// runner first catches up, and must reach the log's end afterwards.
async fn append_with_and_without<S: EventStore + Clone + 'static>(
    name: &str,
    store: &S,
    sink: Arc<dyn ProjectionSink>,
    trees: &dyn AuditTrees,
    seconds: u64,
    out: &mut Results,
) {
    let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _round in 0..2 {
        off.push(append_throughput(store, 32, seconds).await);
        let end = last_position(store).await;
        fold(dyn_store.clone(), sink.clone(), trees, end).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = Runner::new(dyn_store.clone(), sink.clone(), Projection::AuditTree);
        let live = tokio::spawn(async move {
            runner
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        on.push(append_throughput(store, 32, seconds).await);
        let end = last_position(store).await;
        let lag_from = Instant::now();
        while sink.checkpoint(Projection::AuditTree).await.expect("checkpoint") < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lag = lag_from.elapsed();
        let _ = stop.send(());
        live.await.expect("runner task").expect("runner");
        out.add(format!(
            "{name}: append, 32 writers: tree off {:.0} events/s, tree on {:.0} events/s (the tree reached the end {:.0} ms after the writers stopped)",
            off.last().copied().unwrap_or_default(),
            on.last().copied().unwrap_or_default(),
            lag.as_secs_f64() * 1e3
        ));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    out.add(format!(
        "{name}: append, 32 writers: tree on / off = {:.3} (mean of {} runs each)",
        mean(&on) / mean(&off),
        on.len()
    ));
}

async fn last_position<S: EventStore>(store: &S) -> u64 {
    let mut after = keyledger_domain::GlobalPosition::START;
    loop {
        let page = store.read_all(after, 100_000).await.expect("read_all");
        match page.last() {
            Some(e) => after = e.global_position,
            None => return after.0,
        }
    }
}

/// The audit-tree figures on one backend: `trees` and `sink` are the same projection rows.
pub(crate) async fn bench<S: EventStore + Clone + 'static>(
    name: &str,
    store: &S,
    sink: Arc<dyn ProjectionSink>,
    trees: &dyn AuditTrees,
    args: &Args,
    out: &mut Results,
) {
    let (org_events, proofs, seconds) = (args.org_events, args.proofs, args.seconds);
    let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
    let start = Instant::now();
    let org = seed_org(store, org_events).await;
    out.add(format!(
        "{name}: seeded one organization with {org_events} events in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    let end = last_position(store).await;
    let rate = fold(dyn_store, sink.clone(), trees, end).await;
    out.add(format!("{name}: tree fold (catch-up) {rate:.0} events/s"));
    proof_latency(name, store, trees, org, proofs, out).await;
    append_with_and_without(name, store, sink, trees, seconds, out).await;
}
