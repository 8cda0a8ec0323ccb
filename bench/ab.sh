#!/usr/bin/env bash
# A/B of `oms-it` builds under one bench binary (this host drifts: alternate the variants, compare medians).
#
# usage: bench/ab.sh ROUNDS SKUS VARIANT...
#   Each round runs `bench hub_intake` (64 clients, 15 s, real nodes, no payments) once per variant, in the
#   order given; a variant is a build of `oms-it` at /tmp/oms-it.VARIANT, copied under the bench binary
#   before its run (build each with `cargo build --release -p oms-tests --bin oms-it` and copy it there; build
#   the bench binary once with `cargo bench -p oms-tests --bench hub_intake --no-run`). Give the order ABBA
#   by listing the variants so (`bench/ab.sh 2 8 base new new base`).
#   AB_SYNC=1 also runs the sync bench after each hub_intake run; other BENCH_* variables (BENCH_UNITS, ...)
#   pass through to the bench. The first variant's build is left in place at the end.
set -u
cd "$(dirname "$0")/.."
HB=$(ls -t target/release/deps/hub_intake-* | grep -v '\.d$' | head -1)
SB=$(ls -t target/release/deps/sync-* 2>/dev/null | grep -v '\.d$' | head -1)
R=$1; K=$2; shift 2
for r in $(seq 1 "$R"); do
  for v in "$@"; do
    cp "/tmp/oms-it.$v" target/release/oms-it
    echo "== round $r variant $v skus $K $(date +%H:%M:%S)"
    BENCH_SKUS=$K BENCH_LEVELS=${BENCH_LEVELS:-64} BENCH_SECS=${BENCH_SECS:-15} BENCH_PAYMENTS=0 timeout 900 "$HB" --bench 2>&1 \
      | grep -E "raw fsync|^\| |no escrow|hub intake at|panicked"
    if [ "${AB_SYNC:-0}" = 1 ]; then
      echo "== round $r variant $v sync $(date +%H:%M:%S)"
      BENCH_K=0 BENCH_CATCHUP_N=3000 timeout 900 "$SB" --bench 2>&1 | grep -iE "bytes|latency|p50|catch|floor" | head -20
    fi
  done
done
cp "/tmp/oms-it.$1" target/release/oms-it
