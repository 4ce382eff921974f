#!/bin/bash
# The figures of issue 14 (keyledger-client) in one sitting, from release builds. Builds
# nothing but the crate bench (cargo bench compiles it in the release-like bench profile):
#
#   cargo build --release -p keyledger-cli -p akv-emulator -p client-bench
#   BIN=target/release tools/bench-issue-14.sh | tee bench.log
#
# 1. Envelope seal/open ÷ raw aws-lc-rs AES-256-GCM at 64 B, 4 KiB, 64 KiB
#    (crates/keyledger-client/benches/envelope_vs_raw.rs).
# 2. client-bench: cache-hit Client::encrypt on one core; revocation → eviction over 100
#    clients; provider-managed releases (32 clients, SQLite); customer-managed releases against
#    akv-emulator with single flight on and off.
set -u
BIN=${BIN:?a directory with the release binaries}
stamp() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $*"; }
stamp "envelope ÷ raw aws-lc-rs"
cargo bench -q -p keyledger-client --bench envelope_vs_raw
stamp "client-bench"
"$BIN/client-bench" --keyledger-bin "$BIN/keyledger" --emulator-bin "$BIN/akv-emulator" "$@"
stamp done
