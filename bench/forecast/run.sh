#!/usr/bin/env bash
# Reproduces the figures in bench/forecast/RESULTS.md.
#
#   bash bench/forecast/run.sh            # from the repo root (or anywhere)
#
# Environment: DATA (default ../shared/data/forecast relative to the repo root), SEED (42),
# N (3000 synthetic series), CARGO_TARGET_DIR (cargo's default if unset), LOG (a copy of the output).
# Single-core figures are pinned to CPU 0 with taskset when it exists.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
DATA="${DATA:-../shared/data/forecast}"
SEED="${SEED:-42}"
N="${N:-3000}"
LOG="${LOG:-/tmp/oms-forecast-bench.log}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
PIN=()
if command -v taskset >/dev/null 2>&1; then PIN=(taskset -c 0); fi

exec > >(tee "$LOG") 2>&1
echo "# oms-forecast bench, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(rustc --version)"
cargo build --release -p oms-forecast --example forecast_bench
BIN="$TARGET/release/examples/forecast_bench"

echo "== eval on $DATA (ours)"
"$BIN" eval "$DATA"

echo "== intermittent-model throughput, one core (ours)"
"${PIN[@]}" "$BIN" throughput "$SEED" "$N"

echo "== synthetic panel: intermittent RMSSE and inventory simulation (ours, 2 threads)"
"$BIN" panel "$SEED" "$N"

echo "== statsforecast reference"
VENV=/tmp/oms-forecast-sf-venv
CSV=/tmp/oms_intermittent_${SEED}_${N}.csv
"$BIN" export "$SEED" "$N" "$CSV"
if { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; } &&
    timeout 900 "$VENV/bin/pip" install --quiet statsforecast; then
    "${PIN[@]}" "$VENV/bin/python" bench/forecast/ref_statsforecast.py "$DATA" "$CSV"
else
    echo "statsforecast could not be installed; reporting oms figures only"
fi
