#!/bin/bash
# The default `convattn compare` study on this machine, three ways, one after another (nothing else running):
#   1. local: one process, every core (the 15-minute budget sizes it for 1 run at a time);
#   2. processes, 2 workers x 1 thread, on exactly the work of 1 (its --train-size/--epochs, no budget);
#   3. processes, 2 workers x 1 thread, budgeted (the budget sizes it for 2 parallel runs).
# Then benchmarks/study_executors_summary.py writes the table. Usage: benchmarks/study_executors.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: study_executors.sh OUT_DIR}
CONVATTN=${CONVATTN:-convattn}
mkdir -p "$OUT"
: > "$OUT/times.txt"
timed() {  # name, then the compare arguments
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    $CONVATTN compare --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
    echo "$name $(echo "$(date +%s.%N) - $t0" | bc)" >> "$OUT/times.txt"
}
timed local --executor local
TS=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['train_size'])" "$OUT/local/budget.json")
EP=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['epochs'])" "$OUT/local/budget.json")
timed proc --executor processes --workers 2 --train-size "$TS" --epochs "$EP" --time-budget 0
timed procb --executor processes --workers 2
python3 "$(dirname "$0")/study_executors_summary.py" "$OUT"
