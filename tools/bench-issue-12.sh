#!/bin/bash
# The figures of issue 12 in one sitting: SQLite append (store-bench) and the HTTP service
# (http-bench, which starts `keyledger serve`), for a new and an old build, then PostgreSQL
# append ÷ pgbench three times for the new build. Each of NEW and OLD is a directory holding
# release `store-bench` and `keyledger` binaries; http-bench is taken from NEW.
#
#   cargo build --release -p keyledger-cli -p http-bench -p store-bench
#   NEW=target/release OLD=/path/to/old/release tools/bench-issue-12.sh | tee bench.log
set -u
NEW=${NEW:?a directory with the new release binaries}
OLD=${OLD:-}
HB=(--seconds 8 --warmup 2 --clients 32 --sse-events 100000 --lag-rate 500 --lag-seconds 5
    --idle-streams 0,200,1000 --idle-seconds 5)
stamp() { echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $*"; }
for build in "$NEW" ${OLD:+"$OLD"}; do
  stamp "store-bench SQLite, $build"
  "$build/store-bench" --skip-postgres --seconds 5 --events 0
  stamp "http-bench, serve from $build"
  "$NEW/http-bench" --keyledger-bin "$build/keyledger" "${HB[@]}"
done
for i in 1 2 3; do
  stamp "store-bench PostgreSQL run $i, $NEW"
  "$NEW/store-bench" --skip-sqlite --seconds 5 --events 0 --pgbench-seconds 10
done
stamp done
