#!/bin/bash
# The figures of issue 13 (verifiable audit log) in one sitting, from release builds:
#
#   cargo build --release -p keyledger-cli -p http-bench -p store-bench -p audit-bench
#   BIN=target/release tools/bench-issue-13.sh | tee bench.log
#
# 1. Append throughput with the checkpointer on ÷ off through `keyledger serve` (http-bench
#    --checkpointer-rounds: 32 clients changing plans, a fresh store and serve per run, off and
#    on alternating), SQLite and PostgreSQL, at serve's default interval (1m) and at 1s.
# 2. Inclusion-proof latency on a 100,000-event organization log: through serve's
#    `GET …/audit/proof` (http-bench --proof-events) and through the tree port alone
#    (store-bench --audit-tree, which also times appends with the tree projection on and off).
# 3. Offline bundle verification rate (audit-bench, and `keyledger audit verify` as a process).
set -u
BIN=${BIN:?a directory with the release binaries}
PG=${KEYLEDGER_TEST_POSTGRES_URL:-postgres://root@127.0.0.1:5432/postgres}
stamp() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $*"; }
HB=("$BIN/http-bench" --keyledger-bin "$BIN/keyledger")
for interval in 1s 1m; do
  # A 1m interval needs a window that holds a round: 70 s.
  seconds=$([ "$interval" = 1m ] && echo 70 || echo 15)
  rounds=$([ "$interval" = 1m ] && echo 2 || echo 3)
  stamp "checkpointer on/off, SQLite, interval $interval"
  "${HB[@]}" --checkpointer-rounds "$rounds" --checkpoint-interval "$interval" --seconds "$seconds"
  stamp "checkpointer on/off, PostgreSQL, interval $interval"
  "${HB[@]}" --store "$PG" --checkpointer-rounds "$rounds" --checkpoint-interval "$interval" --seconds "$seconds"
done
stamp "proof latency through serve, SQLite"
"${HB[@]}" --proof-events 100000 --proofs 5000
stamp "proof latency through serve, PostgreSQL"
"${HB[@]}" --store "$PG" --proof-events 100000 --proofs 5000
stamp "audit tree: proofs through the port, append with the tree projection on/off"
"$BIN/store-bench" --audit-tree --org-events 100000 --proofs 5000 --seconds 5
stamp "offline bundle verification"
"$BIN/audit-bench" --events 100000 --runs 3 --keyledger-bin "$BIN/keyledger"
stamp done
