//! `envelope::seal` / `envelope::open` against raw `aws-lc-rs` AES-256-GCM on the same key,
//! at 64 B, 4 KiB and 64 KiB, in one run: best-of-rounds MiB/s and the ratio envelope ÷ raw
//! per size (issue 14 target: ≥ 0.9).
//!
//! Two raw baselines, both `LessSafeKey` with an AAD of the envelope's length:
//!
//! - **raw AES-GCM as a service would call it** (the target's baseline): a fresh random
//!   96-bit nonce per seal from the same source as the envelope's (`rand::thread_rng`), the
//!   output in a new buffer (`nonce ‖ ciphertext ‖ tag`), and on open the plaintext in a new
//!   buffer. AES-GCM is only correct with a unique nonce per message, and an API that returns
//!   data allocates it, so this is the least any correct use does;
//! - **the bare cipher**: a fixed nonce and one buffer reused across calls, for reference.
//!   No correct seal can reach it (a nonce must be made and the output must go somewhere).
//!
//! The envelope adds the version byte, the DEK id and the AAD built from the organization
//! and context.
//!
//! ```sh
//! cargo bench -p keyledger-client --bench envelope_vs_raw
//! ```

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use keyledger_client::envelope::{self, DataKey};
use keyledger_domain::{DekId, OrgId};
use rand::RngCore as _;
use zeroize::Zeroizing;

const SIZES: [usize; 3] = [64, 4 * 1024, 64 * 1024];
const ROUNDS: u32 = 5;
const ROUND: Duration = Duration::from_millis(700);

/// Runs `f` for at least `ROUND`, `ROUNDS` times, checking the clock every `batch` calls; the
/// best rate in MiB/s for `size`-byte messages.
fn rate(size: usize, mut f: impl FnMut()) -> f64 {
    (0..ROUNDS).map(|_| one_round(size, &mut f)).fold(0f64, f64::max)
}

/// Counts of calls and bytes far below 2^52: exact as f64.
/// [`rate`] of `ours` and `theirs` with their rounds interleaved (one of each in turn), so a
/// machine that speeds up or slows down during the run moves both alike.
fn paired(size: usize, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> (f64, f64) {
    let (mut best_ours, mut best_theirs) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        best_ours = best_ours.max(one_round(size, &mut ours));
        best_theirs = best_theirs.max(one_round(size, &mut theirs));
    }
    (best_ours, best_theirs)
}

/// One round of `f` of `ROUND`: MiB/s. Fewer clock reads for small messages: about 64 KiB
/// of data between two reads.
fn one_round(size: usize, f: &mut impl FnMut()) -> f64 {
    let batch = (64 * 1024 / size).max(1);
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < ROUND {
        for _ in 0..batch {
            f();
        }
        calls += batch;
    }
    to_f64(calls) * to_f64(size) / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

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
        "| size | seal envelope MiB/s | seal raw MiB/s | seal ratio | seal bare MiB/s | open envelope MiB/s | open raw MiB/s | open ratio | open bare MiB/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst = f64::INFINITY;
    for size in SIZES {
        let plaintext = vec![0x5au8; size];
        let sealed = envelope::seal(org, &ours, &plaintext, context).expect("seal");
        let raw_sealed = raw_seal(&raw, &aad, &plaintext);
        let mut bare_sealed = plaintext.clone();
        raw.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut bare_sealed,
        )
        .expect("bare seal");
        let mut buffer = Vec::with_capacity(size + envelope::TAG_LEN);

        let (seal_envelope, seal_raw) = paired(
            size,
            || {
                std::hint::black_box(envelope::seal(org, &ours, &plaintext, context).expect("seal"));
            },
            || {
                std::hint::black_box(raw_seal(&raw, &aad, &plaintext));
            },
        );
        let seal_bare = rate(size, || {
            buffer.clear();
            buffer.extend_from_slice(&plaintext);
            raw.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut buffer,
            )
            .expect("bare seal");
            std::hint::black_box(&buffer);
        });
        let (open_envelope, open_raw) = paired(
            size,
            || {
                std::hint::black_box(envelope::open(org, &ours, &sealed, context).expect("open"));
            },
            || {
                std::hint::black_box(raw_open(&raw, &aad, &raw_sealed));
            },
        );
        let open_bare = rate(size, || {
            buffer.clear();
            buffer.extend_from_slice(&bare_sealed);
            let opened = raw
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut buffer,
                )
                .expect("bare open");
            std::hint::black_box(opened);
        });
        let (seal_ratio, open_ratio) = (seal_envelope / seal_raw, open_envelope / open_raw);
        worst = worst.min(seal_ratio).min(open_ratio);
        println!(
            "| {size} B | {seal_envelope:.0} | {seal_raw:.0} | {seal_ratio:.3} | {seal_bare:.0} | {open_envelope:.0} | {open_raw:.0} | {open_ratio:.3} | {open_bare:.0} |"
        );
    }
    println!("lowest ratio to raw AES-GCM as a service would call it: {worst:.3} (target ≥ 0.9)");
    components();
}

/// Where the envelope's extra time may go, each part alone, in ns per call: the fresh random
/// nonce of every seal, and the wiped plaintext buffer of every open (allocated, filled,
/// zeroized on drop).
/// Raw AES-256-GCM as a service would call it: a fresh random nonce, a new output buffer
/// `nonce ‖ ciphertext ‖ tag`.
fn raw_seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + envelope::TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .expect("raw seal");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Its counterpart: the plaintext in a new buffer.
fn raw_open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut out = sealed[NONCE_LEN..].to_vec();
    let len = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out)
        .expect("raw open")
        .len();
    out.truncate(len);
    out
}

fn components() {
    let nonce_ns = ns_per_call(|| {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("random");
        std::hint::black_box(nonce);
    });
    let thread_ns = ns_per_call(|| {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        std::hint::black_box(nonce);
    });
    println!(
        "parts alone: 12 random bytes from aws-lc-rs SystemRandom {nonce_ns:.0} ns/call, from rand::thread_rng (the envelope's nonce) {thread_ns:.0} ns/call"
    );
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
