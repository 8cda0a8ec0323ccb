#!/usr/bin/env bash
# Runs every fuzz target of the wire protocol for a bounded time. Installs cargo-fuzz if it is missing.
#
#   fuzz/run.sh [seconds-per-target] [target...]
#
# Environment:
#   FUZZ_SANITIZER  none (default) or address. `address` needs nightly -Z flags: on a stable toolchain the
#                   script sets RUSTC_BOOTSTRAP=1 for it.
#   FUZZ_TARGET_DIR where to build (default: fuzz/target).
#   FUZZ_JOBS       parallel libFuzzer jobs per target (default 1).
#   FUZZ_SEED       libFuzzer's -seed (default 0: a random seed). CI sets one, so that a run explores the same
#                   inputs in the same order each time and a finding is reproducible, not a flaky failure.
set -euo pipefail

cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_decoder decode_body sync_session order_draft check_writer)
fi
sanitizer="${FUZZ_SANITIZER:-none}"
target_dir="${FUZZ_TARGET_DIR:-target}"
jobs="${FUZZ_JOBS:-1}"
seed="${FUZZ_SEED:-0}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

env=()
if [ "$sanitizer" != none ] && ! rustc --version | grep -q nightly; then
    env=(RUSTC_BOOTSTRAP=1)
fi

parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
fi

status=0
for t in "${targets[@]}"; do
    # New inputs go to corpus/<target> (not committed); seeds/<target> (committed, minimized) is read too.
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: ${secs}s, sanitizer $sanitizer"
    if ! env "${env[@]}" cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
        "${parallel[@]}"; then
        echo "== $t FAILED: the crashing input is in fuzz/artifacts/$t/"
        status=1
    fi
done
exit "$status"
