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
#   FUZZ_TARGETS_AT_ONCE
#                   targets run side by side (default 1: one after the other, their output as it comes). Each
#                   libFuzzer process uses one core, so CI runs two on its two cores: each target still gets its
#                   seconds, in half the time. Side by side, each target's output goes to a file and is printed
#                   when it ends: its final stats, or its last 100 lines if it failed.
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

at_once="${FUZZ_TARGETS_AT_ONCE:-1}"
# fuzz_one TARGET: one target's run. New inputs go to corpus/<target> (not committed); seeds/<target>
# (committed, minimized) is read too.
fuzz_one() {
    env "${env[@]}" cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$1" "corpus/$1" "seeds/$1" -- \
        -max_total_time="$secs" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
        "${parallel[@]}"
}
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
done

status=0
if [ "$at_once" -le 1 ]; then
    for t in "${targets[@]}"; do
        echo "== $t: ${secs}s, sanitizer $sanitizer"
        if ! fuzz_one "$t"; then
            echo "== $t FAILED: the crashing input is in fuzz/artifacts/$t/"
            status=1
        fi
    done
    exit "$status"
fi

# Side by side: every target is built first, one after the other (runs that each built their own would wait
# on one another's lock of the build directory), then at most $at_once run at a time.
for t in "${targets[@]}"; do
    env "${env[@]}" cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" "$t"
done
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A target_of=()
# Waits for one run to end and reports it.
reap() {
    local pid rc=0
    wait -n -p pid "${!target_of[@]}" || rc=$?
    local t=${target_of[$pid]}
    unset "target_of[$pid]"
    if [ "$rc" = 0 ]; then
        echo "== $t: ${secs}s, sanitizer $sanitizer: passed"
        grep -E '^(stat::|Done )' "$logs/$t.log" || true
    else
        echo "== $t: ${secs}s, sanitizer $sanitizer: FAILED (exit $rc); its last 100 lines:"
        tail -n 100 "$logs/$t.log"
        echo "== $t FAILED: the crashing input is in fuzz/artifacts/$t/"
        status=1
    fi
}
for t in "${targets[@]}"; do
    while [ "${#target_of[@]}" -ge "$at_once" ]; do
        reap
    done
    fuzz_one "$t" >"$logs/$t.log" 2>&1 &
    target_of[$!]=$t
done
while [ "${#target_of[@]}" -gt 0 ]; do
    reap
done
exit "$status"
