//! Envelope sealing and opening of 64 KiB with `aws-lc-rs` (what `keyledger-client` ships)
//! against RustCrypto's `aes-gcm` on the same data, in one run, and their ratio (ADR 0029).
//!
//! ```sh
//! cargo bench -p keyledger-client --bench aead
//! ```

use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyledger_client::envelope::{self, DataKey};
use keyledger_domain::{DekId, OrgId};

const SIZE: usize = 64 * 1024;
const ROUNDS: u32 = 5;

/// Runs `f` for at least a second, `ROUNDS` times; the best rate in MiB/s.
fn rate(mut f: impl FnMut()) -> f64 {
    let mut best = 0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(1) {
            f();
            n += 1;
        }
        let mib = f64::from(n) * SIZE as f64 / (1024.0 * 1024.0);
        best = best.max(mib / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let org = OrgId::new_v7();
    let key_bytes = [0x24u8; 32];
    let ours = DataKey::new(DekId(1), &key_bytes).unwrap();
    let theirs = Aes256Gcm::new_from_slice(&key_bytes).unwrap();
    let plaintext = vec![0x5au8; SIZE];
    let context = b"table=invoices;row=42";
    let aad = envelope::aad(org, 1, context);
    let nonce = [7u8; 12];

    let sealed = envelope::seal(org, &ours, &plaintext, context).unwrap();
    let their_sealed = theirs
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .unwrap();

    let seal_ours = rate(|| {
        std::hint::black_box(envelope::seal(org, &ours, &plaintext, context).unwrap());
    });
    let seal_theirs = rate(|| {
        std::hint::black_box(
            theirs
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &plaintext,
                        aad: &aad,
                    },
                )
                .unwrap(),
        );
    });
    let open_ours = rate(|| {
        std::hint::black_box(envelope::open(org, &ours, &sealed, context).unwrap());
    });
    let open_theirs = rate(|| {
        std::hint::black_box(
            theirs
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &their_sealed,
                        aad: &aad,
                    },
                )
                .unwrap(),
        );
    });
    println!("AES-256-GCM on 64 KiB, best of {ROUNDS} one-second runs:");
    println!(
        "seal: aws-lc-rs envelope {seal_ours:.0} MiB/s, aes-gcm {seal_theirs:.0} MiB/s, ratio {:.1}",
        seal_ours / seal_theirs
    );
    println!(
        "open: aws-lc-rs envelope {open_ours:.0} MiB/s, aes-gcm {open_theirs:.0} MiB/s, ratio {:.1}",
        open_ours / open_theirs
    );
}
