#!/usr/bin/env bash
# usage: prof16.sh OUTPREFIX [perf]; runs the intake bench (16 clients, 15,000 orders); samples CPU of hub and nodes for 6 s
set -u
cd "$(dirname "$0")/../.."
IB=$(ls -t target/release/deps/intake-* | grep -v '\.d$' | head -1)
OUT=$1
BENCH_N=100 BENCH_TP_N=${TP_N:-15000} $IB --bench > $OUT.bench.log 2>&1 &
BP=$!
for i in $(seq 1 1200); do grep -q "missed (not accepted" $OUT.bench.log && break; sleep 0.5; done
sleep 3
HUB=$(pgrep -f "oms-it hub" | head -1)
NODES=$(pgrep -f "oms-it node" | tr '\n' ' ')
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
declare -A a
for p in $HUB $NODES; do a[$p]=$(cpu $p); done
if [ "${2:-}" = perf ]; then
  perf record -F 149 --call-graph dwarf,65528 -o $OUT.hub.data -p $HUB -- sleep 6 > /dev/null 2>&1 &
  N1=$(echo $NODES | awk '{print $1}')
  perf record -F 149 --call-graph dwarf,65528 -o $OUT.node.data -p $N1 -- sleep 6 > /dev/null 2>&1 &
  wait %2 %3 2>/dev/null
else
  sleep 6
fi
for p in $HUB $NODES; do echo "pid $p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-30) cpu_s $(( ($(cpu $p) - ${a[$p]}) ))/100 over 6 s"; done > $OUT.cpu.log
wait $BP
cat $OUT.cpu.log
grep -E "raw fsync|throughput|POST -> accepted|hub's 201|hub 201|-> accepted at" $OUT.bench.log
