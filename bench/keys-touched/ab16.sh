#!/usr/bin/env bash
# usage: ab16.sh OUTDIR variant... ; each variant is /tmp/oms-it.<variant>, copied over target/release/oms-it, then one prof16 run
set -u
OUT=$1; shift
mkdir -p $OUT
i=0
for v in "$@"; do
  i=$((i+1))
  cp /tmp/oms-it.$v "$(dirname "$0")"/../../target/release/oms-it
  "$(dirname "$0")"/prof16.sh $OUT/$i-$v > $OUT/$i-$v.sum 2>&1
  echo "== $i $v: $(grep -h 'throughput' $OUT/$i-$v.bench.log | grep -o '= [0-9]* orders/s') $(grep -h 'POST -> accepted:' $OUT/$i-$v.bench.log | grep -o 'p50 [0-9.]* ms') cpu: $(awk '{print $5}' $OUT/$i-$v.cpu.log | tr '\n' ' ')"
done
