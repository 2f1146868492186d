#!/usr/bin/env bash
# Reproduces bench/RESULTS.md: every run below, one after the other (about 35 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .ddnn/env ] || bash scripts/setup.sh
. .ddnn/env
B="$(dirname "$DDNN_BIN")/ddnn-bench"
R=bench/results
run() { name=$1; shift; echo "== $name: $*"; "$B" "$@" --out "$R/$name" >"$R/$name.log" 2>&1 || { echo "failed: see $R/$name.log"; exit 1; }; }
mkdir -p "$R"
run ramp-dense ramp --models mnist --modes elastic,fixed,relay --start 500 --step 500 --step-secs 4
run ramp-dense-memory ramp --models mnist --modes elastic,relay --broker-storage memory://tansu/ --start 1000 --step 1000 --step-secs 3 --max 20000
run ramp-cnn ramp --models mnist-cnn --modes elastic,fixed --start 100 --step 100 --step-secs 4
run burst-cnn burst --models mnist-cnn --modes elastic,fixed --count 3000
run paper-1 paper --clients 1 --modes elastic,relay
run paper-3 paper --clients 3 --modes elastic
run paper-5 paper --clients 5 --modes elastic,fixed,relay
run paper-10 paper --clients 10 --modes elastic,relay
bash scripts/bench-elastic.sh all   # the resnet family: capacity, constant, burst, adaptive overload
