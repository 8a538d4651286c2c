#!/usr/bin/env bash
# Wall time of `medseg segment` over a folder of volumes with each engine, start-up included, and with one
# process per case (the model loaded each time). Run it 3 times and take medians.
#   benchmarks/segment_engines.sh MODEL INPUT_DIR      (e.g. models/model.pt and a folder of the validation images)
set -euo pipefail
model=$1 inputs=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
timed() {
    local name=$1; shift
    rm -rf "$out/labels"
    local start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    echo "$name: $(echo "$(date +%s.%N) - $start" | bc) s"
}
timed local medseg segment "$inputs" -o "$out/labels" -m "$model"
timed "ray, 1 worker" medseg segment "$inputs" -o "$out/labels" -m "$model" --engine ray --workers 1
timed "ray, 2 workers" medseg segment "$inputs" -o "$out/labels" -m "$model" --engine ray --workers 2
per_case() { for file in "$inputs"/*; do medseg segment "$file" -o "$out/labels" -m "$model"; done; }
timed "one process per case" per_case
