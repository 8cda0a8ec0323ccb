#!/usr/bin/env bash
# usage: ab.sh ROUNDS SKUS VARIANT...
set -u
cd /work/main
HB=$(ls -t target/release/deps/hub_intake-* | grep -v '\.d$' | head -1)
R=$1; K=$2; shift 2
for r in $(seq 1 $R); do
  for v in "$@"; do
    cp /tmp/oms-it.$v target/release/oms-it
    echo "== round $r variant $v skus $K $(date +%H:%M:%S)"
    BENCH_SKUS=$K BENCH_LEVELS=64 BENCH_SECS=15 BENCH_PAYMENTS=0 timeout 900 $HB --bench 2>&1 | grep -E "raw fsync|^\| 64|no escrow|panicked"
  done
done
cp /tmp/oms-it.delta target/release/oms-it
