//! `envelope::seal` / `envelope::open` against raw `aws-lc-rs` AES-256-GCM on the same key,
//! at 64 B, 4 KiB and 64 KiB, in one run: best-of-rounds MiB/s and the ratio envelope ÷ raw
//! per size (issue 14 target: ≥ 0.9).
//!
//! The raw side is what the envelope cannot do without: `LessSafeKey::seal_in_place_append_tag`
//! / `open_in_place` with a 12-byte nonce and an AAD of the envelope's length, into a buffer
//! reused across calls (the plaintext or ciphertext copied in first, since both work in
//! place). The envelope adds a fresh random nonce, the header, the AAD built from the
//! organization and context, and a new output buffer per call.
//!
//! After the table, the parts that may explain a gap, each timed alone: the random nonce of a
//! seal and the wiped plaintext buffer of an open.
//!
//! ```sh
//! cargo bench -p keyledger-client --bench envelope_vs_raw
//! ```

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use keyledger_client::envelope::{self, DataKey};
use keyledger_domain::{DekId, OrgId};
use zeroize::Zeroizing;

const SIZES: [usize; 3] = [64, 4 * 1024, 64 * 1024];
const ROUNDS: u32 = 5;
const ROUND: Duration = Duration::from_millis(700);

/// Runs `f` for at least `ROUND`, `ROUNDS` times, checking the clock every `batch` calls; the
/// best rate in MiB/s for `size`-byte messages.
fn rate(size: usize, mut f: impl FnMut()) -> f64 {
    // Fewer clock reads for small messages: about 64 KiB of data between two reads.
    let batch = (64 * 1024 / size).max(1);
    let mut best = 0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut calls = 0usize;
        while start.elapsed() < ROUND {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        let mib = to_f64(calls) * to_f64(size) / (1024.0 * 1024.0);
        best = best.max(mib / start.elapsed().as_secs_f64());
    }
    best
}

/// Counts of calls and bytes far below 2^52: exact as f64.
#[allow(clippy::cast_precision_loss)]
fn to_f64(n: usize) -> f64 {
    n as f64
}

fn main() {
    let org = OrgId::new_v7();
    let key_bytes = [0x24u8; 32];
    let ours = DataKey::new(DekId(1), &key_bytes).expect("a 32-byte key");
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).expect("a 32-byte key"));
    let context = b"table=invoices;row=42";
    // The same AAD length as the envelope's.
    let aad = envelope::aad(org, 1, context);
    let nonce = [7u8; NONCE_LEN];

    println!(
        "AES-256-GCM, envelope (aws-lc-rs) ÷ raw aws-lc-rs LessSafeKey, AAD {} bytes, best of {ROUNDS} rounds of {} ms:",
        aad.len(),
        ROUND.as_millis()
    );
    println!(
        "| size | seal envelope MiB/s | seal raw MiB/s | seal ratio | open envelope MiB/s | open raw MiB/s | open ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst = f64::INFINITY;
    for size in SIZES {
        let plaintext = vec![0x5au8; size];
        let sealed = envelope::seal(org, &ours, &plaintext, context).expect("seal");
        let mut raw_sealed = plaintext.clone();
        raw.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut raw_sealed,
        )
        .expect("raw seal");
        let mut buffer = Vec::with_capacity(size + envelope::TAG_LEN);

        let seal_envelope = rate(size, || {
            std::hint::black_box(envelope::seal(org, &ours, &plaintext, context).expect("seal"));
        });
        let seal_raw = rate(size, || {
            buffer.clear();
            buffer.extend_from_slice(&plaintext);
            raw.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut buffer,
            )
            .expect("raw seal");
            std::hint::black_box(&buffer);
        });
        let open_envelope = rate(size, || {
            std::hint::black_box(envelope::open(org, &ours, &sealed, context).expect("open"));
        });
        let open_raw = rate(size, || {
            buffer.clear();
            buffer.extend_from_slice(&raw_sealed);
            let opened = raw
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut buffer,
                )
                .expect("raw open");
            std::hint::black_box(opened);
        });
        let (seal_ratio, open_ratio) = (seal_envelope / seal_raw, open_envelope / open_raw);
        worst = worst.min(seal_ratio).min(open_ratio);
        println!(
            "| {size} B | {seal_envelope:.0} | {seal_raw:.0} | {seal_ratio:.3} | {open_envelope:.0} | {open_raw:.0} | {open_ratio:.3} |"
        );
    }
    println!("lowest ratio: {worst:.3} (target ≥ 0.9)");
    components();
}

/// Where the envelope's extra time may go, each part alone, in ns per call: the fresh random
/// nonce of every seal, and the wiped plaintext buffer of every open (allocated, filled,
/// zeroized on drop).
fn components() {
    let nonce_ns = ns_per_call(|| {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("random");
        std::hint::black_box(nonce);
    });
    println!("parts alone: SystemRandom::new().fill(12 bytes) {nonce_ns:.0} ns/call");
    for size in SIZES {
        let source = vec![0x5au8; size];
        let plain_ns = ns_per_call(|| {
            std::hint::black_box(source.to_vec());
        });
        let wiped_ns = ns_per_call(|| {
            std::hint::black_box(Zeroizing::new(source.to_vec()));
        });
        println!(
            "parts alone, {size} B: Vec copy {plain_ns:.0} ns/call, Zeroizing<Vec> copy + wipe on drop {wiped_ns:.0} ns/call"
        );
    }
}

/// The best of `ROUNDS` rounds of `ROUND`, in ns per call of `f`.
fn ns_per_call(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut calls = 0usize;
        while start.elapsed() < ROUND {
            for _ in 0..64 {
                f();
            }
            calls += 64;
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e9 / to_f64(calls));
    }
    best
}
