#!/usr/bin/env bash
# Wall time of `medseg segment` over a folder of volumes with each engine, start-up included, and with one
# process per case (the model loaded each time): the median of REPEATS runs of each (3; the process per case
# PER_CASE_REPEATS, 1), printed and appended to benchmarks/results/segment_engines.csv (RESULTS=FILE for another;
# RESULTS= appends nowhere), which the documentation's Measured page renders. MEDSEG_MACHINE names the machine.
#   benchmarks/segment_engines.sh MODEL INPUT_DIR      (e.g. models/model.pt and a folder of the validation images)
set -euo pipefail
model=$1 inputs=$2
here=$(cd "$(dirname "$0")" && pwd)
results=${RESULTS-$here/results/segment_engines.csv}
repeats=${REPEATS:-3}
cases=$(find "$inputs" -mindepth 1 -maxdepth 1 | wc -l)
machine=${MEDSEG_MACHINE:-"$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPU cores"}
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || true)
if [ -n "$commit" ] && [ -n "$(git -C "$here" status --porcelain --untracked-files=no)" ]; then commit="$commit-dirty"; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

quoted() { local text=${1//\"/\"\"}; printf '"%s"' "$text"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
timed() {
    local name=$1 runs=$2; shift 2
    local times=() start seconds
    for ((run = 0; run < runs; run++)); do
        rm -rf "$out/labels"
        start=$(date +%s.%N)
        "$@" > /dev/null 2>&1
        times+=("$(echo "$(date +%s.%N) - $start" | bc)")
    done
    seconds=$(printf '%s\n' "${times[@]}" | median)
    echo "$name: $seconds s (median of $runs: ${times[*]})"
    if [ -n "$results" ]; then
        if [ ! -s "$results" ]; then echo "configuration,cases,seconds,runs,command,machine,date,commit" > "$results"; fi
        LC_ALL=C printf '%s,%s,%.1f,%s,%s,%s,%s,%s\n' "$(quoted "$name")" "$cases" "$seconds" "$runs" \
            "$(quoted "benchmarks/segment_engines.sh $model $inputs")" "$(quoted "$machine")" "$(date +%F)" \
            "$commit" >> "$results"
    fi
}
timed "--engine local" "$repeats" medseg segment "$inputs" -o "$out/labels" -m "$model"
timed "--engine ray, 1 worker" "$repeats" medseg segment "$inputs" -o "$out/labels" -m "$model" --engine ray --workers 1
timed "--engine ray, 2 workers" "$repeats" medseg segment "$inputs" -o "$out/labels" -m "$model" --engine ray --workers 2
per_case() { for file in "$inputs"/*; do medseg segment "$file" -o "$out/labels" -m "$model"; done; }
timed "one medseg segment process per case" "${PER_CASE_REPEATS:-1}" per_case
