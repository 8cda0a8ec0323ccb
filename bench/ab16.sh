#!/usr/bin/env bash
# A/B of `oms-it` builds under the channel → accepted bench at 16 clients, with each process's CPU and the
# fsyncs, writes and context switches of the hub and one node over the whole throughput phase (this host
# drifts: alternate the variants, compare medians).
#
# usage: bench/ab16.sh OUTDIR VARIANT...
#   A variant is a build of `oms-it` at /tmp/oms-it.VARIANT (`cargo build --release -p oms-tests --bin oms-it`,
#   then copy it there), copied under the bench binary (`cargo bench -p oms-tests --bench intake --no-run`)
#   before its run; list them ABBA (`bench/ab16.sh /tmp/ab base new new base`). One line per run: orders/s,
#   POST → accepted p50 (and the hub's 201 p50), CPU µs per order of the hub, of both nodes and of the bench's
#   own clients (and feed followers), and the
#   counts of fdatasync, pwrite64 and context switches (perf's software events) of the first node and the hub
#   while the `TP_N` (default 15,000) orders ran. Needs `perf`. The first variant's build is left in place.
set -u
OUT=$1; shift; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
IB=$(ls -t target/release/deps/intake-* | grep -v '\.d$' | head -1)
N=${TP_N:-15000}
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
events=syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,context-switches
count() { awk -F, -v e="$2" '$3 ~ e {print $1}' "$1"; }
i=0
for v in "$@"; do
  i=$((i+1)); cp "/tmp/oms-it.$v" target/release/oms-it
  L=$OUT/$i-$v.log
  BENCH_N=100 BENCH_TP_N=$N timeout 900 "$IB" --bench > "$L" 2>&1 &
  BP=$!
  for _ in $(seq 1 3000); do grep -q "missed (not accepted" "$L" && break; sleep 0.2; done
  HUB=$(pgrep -f "oms-it hub" | head -1); NODES=$(pgrep -f "oms-it node" | tr '\n' ' ')
  CLIENTS=$(pgrep -f "^[^ ]*deps/intake-[0-9a-f]* --bench" | head -1)
  declare -A a b
  for p in $HUB $NODES $CLIENTS; do a[$p]=$(cpu "$p"); b[$p]=${a[$p]}; done
  perf stat -e $events -p "$HUB" -x, -o "$OUT/$i-$v.hubstat" > /dev/null 2>&1 &
  S1=$!
  perf stat -e $events -p "$(echo $NODES | awk '{print $1}')" -x, -o "$OUT/$i-$v.nodestat" > /dev/null 2>&1 &
  S2=$!
  # The processes stop before the bench prints its throughput: keep the last reading of each.
  for _ in $(seq 1 6000); do
    grep -q "^throughput:" "$L" && break
    for p in $HUB $NODES $CLIENTS; do c=$(cpu "$p" 2>/dev/null) && b[$p]=$c; done
    sleep 0.1
  done
  kill -INT $S1 $S2 2>/dev/null; wait $S1 $S2 2>/dev/null
  wait $BP
  tp=$(grep -o "= [0-9]* orders/s" "$L" | grep -o "[0-9]*")
  p50=$(grep "POST -> accepted:" "$L" | grep -o "p50 [0-9.]* ms")
  h201=$(grep "of which the hub" "$L" | grep -o "p50 [0-9.]* ms")
  hub=$(( (b[$HUB] - a[$HUB]) * 10000 / N )); nodes=0
  for p in $NODES; do nodes=$(( nodes + (b[$p] - a[$p]) * 10000 / N )); done
  clients=$(( (b[$CLIENTS] - a[$CLIENTS]) * 10000 / N ))
  n="$OUT/$i-$v.nodestat"; h="$OUT/$i-$v.hubstat"
  echo "== $i $v: $tp orders/s, accepted $p50 (201 $h201); CPU us/order hub $hub nodes $nodes clients $clients;" \
    "node1 fdatasync $(count "$n" fdatasync) pwrite $(count "$n" pwrite64) cs $(count "$n" context);" \
    "hub fdatasync $(count "$h" fdatasync) pwrite $(count "$h" pwrite64) cs $(count "$h" context)"
  unset a b
done
cp "/tmp/oms-it.$1" target/release/oms-it
