#!/bin/bash
# Node intake: the cost of API keys and TLS. Three sides alternate so each sees the same machine:
#   base  — the build before API keys and TLS (BASE_DEPS, e.g. a checkout of 6c9de95), plain HTTP, no key;
#   auth  — this build, plain HTTP, every request with an API key;
#   tls   — this build, HTTPS (BENCH_TLS=1), every request with an API key.
# Build first: `cargo bench -p oms-tests --bench node_intake --no-run` in both checkouts.
# BASE_DEPS / NEW_DEPS: their target/release/deps; OUT_DIR: where intake.log goes; ROUNDS (default 3);
# SIDES (default "base auth tls").
set -u
cd "${OUT_DIR:-.}"
bin() { ls -t "$1"/"$2"-* | grep -v '\.d$' | head -1; }  # the newest build
for round in $(seq 1 "${ROUNDS:-3}"); do
  for side in ${SIDES:-base auth tls}; do
    case $side in
      base) d=$BASE_DEPS; tls=0 ;;
      auth) d=$NEW_DEPS; tls=0 ;;
      tls) d=$NEW_DEPS; tls=1 ;;
    esac
    echo "=== node_intake $side round $round $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> intake.log
    BENCH_TLS=$tls BENCH_SECS=8 BENCH_ORDERS=100000 timeout 900 "$(bin "$d" node_intake)" --bench >> intake.log 2>&1
  done
done
echo "=== done $(date -u +%H:%M:%S)" >> intake.log
