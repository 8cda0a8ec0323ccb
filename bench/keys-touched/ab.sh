#!/usr/bin/env bash
# usage: ab.sh SKUS VARIANT... : one `bench hub_intake` run (64 clients, 15 s) per variant in the order given;
# each variant is a build of `oms-it` at /tmp/oms-it.VARIANT, copied under the one bench binary before its run.
set -u
cd "$(dirname "$0")/../.."
HB=$(ls -t target/release/deps/hub_intake-* | grep -v '\.d$' | head -1)
K=$1; shift
for v in "$@"; do
  cp /tmp/oms-it.$v target/release/oms-it
  echo "== variant $v skus $K $(date +%H:%M:%S)"
  BENCH_SKUS=$K BENCH_LEVELS=64 BENCH_SECS=15 BENCH_PAYMENTS=0 timeout 900 $HB --bench 2>&1 | grep -E "raw fsync|^\| 64|no escrow|panicked"
done
