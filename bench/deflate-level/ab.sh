#!/usr/bin/env bash
# usage: ab.sh ROUNDS VARIANT... ; runs hub_intake (64 clients, 15 s, with nodes) then the sync bench per variant per round
set -u
cd /work/main
HB=$(ls -t target/release/deps/hub_intake-* | grep -v '\.d$' | head -1)
SB=$(ls -t target/release/deps/sync-* | grep -v '\.d$' | head -1)
R=$1; shift
for r in $(seq 1 $R); do
  for v in "$@"; do
    cp /tmp/oms-it.$v target/release/oms-it
    echo "== round $r variant $v hub_intake $(date +%H:%M:%S)"
    BENCH_LEVELS=64 BENCH_SECS=15 BENCH_PAYMENTS=0 $HB --bench 2>&1 | grep -E "raw fsync|^\| |hub intake at"
    echo "== round $r variant $v sync $(date +%H:%M:%S)"
    BENCH_K=0 BENCH_CATCHUP_N=3000 $SB --bench 2>&1 | grep -iE "bytes|latency|p50|catch|floor" | head -20
  done
done
cp /tmp/oms-it.l6 target/release/oms-it
