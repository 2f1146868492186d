#!/usr/bin/env bash
# The demo: a broker on 127.0.0.1:9092, the three tiers of topology/local.toml in one process,
# the 2,000 held-out digits sent in the paper's JSON format; prints accuracy, exits per tier and
# latency percentiles, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .ddnn/env
DATA=.ddnn/demo-broker
rm -rf "$DATA"
NODE_PID=
cleanup() {
  [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null || true
  bash scripts/broker.sh stop --data "$DATA" >/dev/null || true
}
trap cleanup EXIT INT TERM
bash scripts/broker.sh start --port 9092 --data "$DATA"
# The local broker is tansu, which holds fetches: the adaptive wait from the first record.
"$DDNN_BIN" node --topology topology/local.toml --tier all --fetch-mode adaptive >.ddnn/demo-node.log 2>&1 &
NODE_PID=$!
for _ in $(seq 1 200); do
  curl -sf http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break
  kill -0 "$NODE_PID" 2>/dev/null || { cat .ddnn/demo-node.log >&2; exit 1; }
  sleep 0.1
done
echo "tiers running (log: .ddnn/demo-node.log); sending ${COUNT:-2000} digits at ${RATE:-200}/s"
"$DDNN_BIN" demo --topology topology/local.toml --digits models/heldout.bin --count "${COUNT:-2000}" --rate "${RATE:-200}"
