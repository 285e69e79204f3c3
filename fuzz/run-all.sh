#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a while, one or two at a time, and appends
# one line per target to a results file:
#
#   <date> target=<t> seconds=<s> execs=<n> cov=<n> ft=<n> crashes=<n> [artifacts...]
#
# execs is libFuzzer's final `stat::number_of_executed_units`, cov and ft come from its
# last status line, crashes counts the files the run left in artifacts/<t>/ (crash-,
# oom-, timeout-, leak-). A run stops at its first crash; reproduce it with
# `cargo +nightly fuzz run <t> artifacts/<t>/<file>`, then keep it as a regression test
# in the normal test suite.
#
# Usage: fuzz/run-all.sh [--minutes N | --seconds N] [--jobs 1|2] [--results FILE] [target...]
#   --minutes N   time per target (default 10)
#   --seconds N   time per target, in seconds (for smoke runs)
#   --jobs J      targets run at once (default 1; the machine has 2 cores)
#   --results F   where lines are appended (default fuzz/results.txt)
# Environment: FUZZ_SANITIZER (default none: the library forbids unsafe code, and
# without AddressSanitizer a run executes several times more inputs; `address` works too).
#
# New inputs go to runs/<t>/corpus (scratch, not committed); the seeds in corpus/<t> are
# only read. Needs cargo-fuzz and a nightly toolchain (`cargo +nightly fuzz`).
set -euo pipefail
cd "$(dirname "$0")"

seconds=600
jobs=1
results=results.txt
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) seconds=$(( $2 * 60 )); shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$jobs" in 1|2) ;; *) echo "--jobs is 1 or 2" >&2; exit 2 ;; esac
sanitizer=${FUZZ_SANITIZER:-none}
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ -d corpus ] || ./seed.sh

echo "building ${#targets[@]} targets (sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer" >/dev/null

run_one() {
    local t=$1
    local log=runs/$t.log
    mkdir -p "runs/$t/corpus" "artifacts/$t" corpus/"$t"
    local before after start end
    before=$(find "artifacts/$t" -type f | sort)
    start=$(date +%s)
    # -timeout: one input taking longer is a hang; -rss_limit_mb: libFuzzer's default.
    cargo +nightly fuzz run -s "$sanitizer" "$t" "runs/$t/corpus" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048 \
        >"$log" 2>&1 || true
    end=$(date +%s)
    after=$(find "artifacts/$t" -type f | sort)
    local new
    new=$(comm -13 <(echo "$before") <(echo "$after") | grep -v '^$' || true)
    local crashes execs status cov ft
    crashes=$(printf '%s' "$new" | grep -c . || true)
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    status=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) target=$t seconds=$((end - start)) execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} crashes=$crashes"
    if [ -n "$new" ]; then
        line="$line $(echo "$new" | tr '\n' ' ')"
    fi
    echo "$line" >>"$results"
    echo "$line"
}

mkdir -p runs
failed=0
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
wait || failed=1
if grep -q "crashes=[1-9]" <(tail -n "${#targets[@]}" "$results"); then
    echo "crashes found: see artifacts/ and runs/<target>.log" >&2
    exit 1
fi
exit "$failed"
