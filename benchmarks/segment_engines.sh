#!/usr/bin/env bash
# Wall time of `medseg segment` over a folder of volumes with each engine, start-up included, and with one
# process per case (the model loaded each time): the median of REPEATS runs of each (3; the process per case
# PER_CASE_REPEATS, 1), the cases an hour it makes, and the peak resident memory of a process that segments (the
# medseg process; with Ray the largest worker's, from the manifest's worker_peak_mib). Printed and appended to
# benchmarks/results/segment_engines.csv (RESULTS=FILE for another; RESULTS= appends nowhere), which the
# documentation's Measured page renders. MEDSEG_MACHINE names the machine; ENGINES (default "local ray1 ray2
# per-case") chooses the configurations.
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
peak_kib() { /usr/bin/time -a -o "$out/peak" -f %M "$@"; }  # each medseg process's peak, one line each
worker_peaks() {  # the Ray workers' peaks, as recorded in the manifest
    python -c 'import csv, sys; [print(int(r["worker_peak_mib"]) * 1024) for r in csv.DictReader(open(sys.argv[1]))]' \
        "$out/labels/manifest.csv" >> "$out/peak"
}
timed() {
    local name=$1 runs=$2; shift 2
    local times=() start seconds peak
    rm -f "$out/peak"
    for ((run = 0; run < runs; run++)); do
        rm -rf "$out/labels"
        start=$(date +%s.%N)
        "$@" > /dev/null 2>&1
        times+=("$(echo "$(date +%s.%N) - $start" | bc)")
        if [ -f "$out/labels/manifest.csv" ]; then worker_peaks; fi
    done
    seconds=$(printf '%s\n' "${times[@]}" | median)
    peak=$(sort -g "$out/peak" | tail -1 | awk '{ printf "%.2f", $1 / 1048576 }')
    echo "$name: $seconds s (median of $runs: ${times[*]}), peak memory of a segmenting process $peak GiB"
    if [ -n "$results" ]; then
        if [ ! -s "$results" ]; then
            echo "configuration,cases,seconds,cases_per_hour,runs,peak_memory_gib,command,machine,date,commit" > "$results"
        fi
        LC_ALL=C printf '%s,%s,%.1f,%.0f,%s,%s,%s,%s,%s,%s\n' "$(quoted "$name")" "$cases" "$seconds" \
            "$(echo "$cases * 3600 / $seconds" | bc -l)" "$runs" "$peak" \
            "$(quoted "benchmarks/segment_engines.sh $model $inputs")" "$(quoted "$machine")" "$(date +%F)" \
            "$commit" >> "$results"
    fi
}
ray_workers() { medseg segment "$inputs" -o "$out/labels" -m "$model" --engine ray --workers "$1"; }
per_case() { for file in "$inputs"/*; do peak_kib medseg segment "$file" -o "$out/labels" -m "$model"; done; }
for engine in ${ENGINES:-local ray1 ray2 per-case}; do
    case $engine in
        local) timed "--engine local" "$repeats" peak_kib medseg segment "$inputs" -o "$out/labels" -m "$model" ;;
        ray1) timed "--engine ray, 1 worker" "$repeats" ray_workers 1 ;;
        ray2) timed "--engine ray, 2 workers" "$repeats" ray_workers 2 ;;
        per-case) timed "one medseg segment process per case" "${PER_CASE_REPEATS:-1}" per_case ;;
        *) echo "unknown engine $engine (local, ray1, ray2, per-case)" >&2; exit 2 ;;
    esac
done
