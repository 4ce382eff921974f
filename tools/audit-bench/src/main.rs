//! Offline audit bundle verification rate (issue 13): one organization's log of `--events`
//! events is appended to the in-memory store, its checkpoint signed and its bundle written as
//! JSON; then the bundle is read, parsed and verified (`keyledger_audit::verify_bundle`: the
//! signature, every leaf re-encoded and compared, every leaf hashed, the root, and a previous
//! checkpoint at half the size) `--runs` times. With `--keyledger-bin`, the shipped
//! `keyledger audit verify` is timed on the same file too.
//!
//! ```sh
//! cargo run --release -p audit-bench -- [--events 100000] [--runs 3] [--keyledger-bin target/release/keyledger]
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keyledger_audit::{AuditSigner, Bundle, Checkpoint, org_origin, verify_bundle};
use keyledger_domain::event::TenantAdded;
use keyledger_domain::{ActorKind, Event, OrgId, Role, StreamId, StreamVersion, TenantId};
use keyledger_store::{EnvelopeActor, EventMetadata, EventStore, InMemoryStore, KeyRing, NewEvent, merkle};

const ORIGIN: &str = "keyledger.bench";

/// Offline audit bundle verification rate.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Events in the organization's log.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Timed verifications (the best and the median are reported).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Also time `keyledger audit verify` as a process on the same bundle.
    #[arg(long, value_name = "PATH")]
    keyledger_bin: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let org = OrgId::new_v7();
    let stream = StreamId::for_org(org);
    let store = InMemoryStore::new(Arc::new(KeyRing::generate()));
    let mut version = StreamVersion::NONE;
    let mut left = args.events;
    while left > 0 {
        let n = left.min(1000);
        let batch = (0..n)
            .map(|i| event(&format!("tenant {}", version.0 + i)))
            .collect();
        version = store.append(stream, version, batch, None).await?.last_version;
        left -= n;
    }
    let events = store.read_stream(stream, StreamVersion(1)).await?;
    let leaves: Vec<_> = events.iter().map(merkle::event_leaf_hash).collect();
    let signer = AuditSigner::generate(ORIGIN)?;
    let sign = |n: usize| -> Result<String, keyledger_audit::NoteError> {
        let size = u64::try_from(n).unwrap_or(u64::MAX);
        Ok(signer.sign_checkpoint(&Checkpoint::new(
            org_origin(ORIGIN, org),
            size,
            merkle::root(&leaves[..n]),
        )?))
    };
    let bundle = Bundle::build(org, &events, sign(leaves.len())?);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bundle.json");
    std::fs::write(&path, serde_json::to_vec(&bundle)?)?;
    let previous_path = dir.path().join("previous.checkpoint");
    let previous = sign(leaves.len() / 2)?;
    std::fs::write(&previous_path, &previous)?;
    let bytes = std::fs::metadata(&path)?.len();
    drop((bundle, events, leaves));
    println!(
        "bundle: {} events, {:.1} MB, previous checkpoint at size {}",
        args.events,
        as_mb(bytes),
        args.events / 2
    );

    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let started = Instant::now();
        let text = std::fs::read_to_string(&path)?;
        let parsed: Bundle = serde_json::from_str(&text)?;
        let verified = verify_bundle(&parsed, signer.verifier(), Some(&previous))?;
        times.push(started.elapsed());
        assert_eq!(verified.checkpoint.size(), args.events);
    }
    report(
        "in process (read + parse + verify_bundle)",
        args.events,
        &mut times,
    );

    if let Some(bin) = &args.keyledger_bin {
        let mut times = Vec::new();
        for _ in 0..args.runs.max(1) {
            let started = Instant::now();
            let out = Command::new(bin)
                .args(["audit", "verify", "--bundle"])
                .arg(&path)
                .args(["--verifier-key", &signer.verifier_key(), "--previous"])
                .arg(&previous_path)
                .output()?;
            times.push(started.elapsed());
            if !out.status.success() {
                return Err(
                    format!("keyledger audit verify: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
            }
        }
        report("keyledger audit verify (process)", args.events, &mut times);
    }
    Ok(())
}

fn report(what: &str, events: u64, times: &mut [Duration]) {
    times.sort();
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    let median = times[times.len() / 2];
    println!(
        "{what}: best {:.2}s = {:.0} events/s, median {:.2}s = {:.0} events/s ({} runs)",
        times[0].as_secs_f64(),
        rate(times[0]),
        median.as_secs_f64(),
        rate(median),
        times.len()
    );
}

#[allow(clippy::cast_precision_loss)]
fn as_mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn event(name: &str) -> NewEvent {
    NewEvent {
        event: Event::TenantAdded(TenantAdded {
            tenant_id: TenantId::new_v7(),
            name: name.to_owned(),
        }),
        metadata: EventMetadata {
            occurred_at: chrono::Utc::now(),
            actor: EnvelopeActor {
                kind: ActorKind::Service,
                id: "bench".into(),
                roles: BTreeSet::from([Role::Platform]),
                source_ip: Some("192.0.2.10".into()),
            },
            correlation_id: None,
            causation_id: None,
        },
    }
}
