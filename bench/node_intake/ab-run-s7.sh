#!/bin/bash
# A/B of the node intake and sync benches between two checkouts, alternating so both see the same machine.
# Build each first: `cargo bench -p oms-tests --bench node_intake --bench sync --no-run` in both checkouts.
# BASE_DEPS / NEW_DEPS: their target/release/deps; OUT_DIR: where intake.log and sync.log go.
set -u
cd "${OUT_DIR:-.}"
bin() { ls -t "$1"/"$2"-* | grep -v '\.d$' | head -1; }  # the newest build
for round in 1 2 3; do
  for side in base new; do
    if [ $side = base ]; then d=$BASE_DEPS; else d=$NEW_DEPS; fi
    echo "=== node_intake $side round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> intake.log
    BENCH_SECS=8 BENCH_ORDERS=200000 timeout 900 "$(bin "$d" node_intake)" --bench >> intake.log 2>&1
  done
done
for side in base new; do
  if [ $side = base ]; then d=$BASE_DEPS; else d=$NEW_DEPS; fi
  echo "=== sync $side $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> sync.log
  BENCH_K=0 timeout 900 "$(bin "$d" sync)" --bench >> sync.log 2>&1
done
echo "=== done $(date -u +%H:%M:%S)" >> sync.log
