#!/usr/bin/env bash
# The edge's footprint (issue 16, item 4): each tier of a model family alone in a container
# limited like a small edge box (`docker run --cpus 1 --memory 512m`, the image of
# scripts/images.sh), all three tiers against a local tansu broker, digits sent from the host
# at a fixed rate. Per tier: peak RSS (VmHWM of the node, PID 1 of its container), the
# container's CPU time per message the tier took in (cgroup cpuacct over the run divided by
# ddnn_messages_in_total), and the rate it sustained.
#
#   scripts/measure-footprint.sh [FAMILY:RATE:SECONDS[:BATCH] ...]
#   BATCH: every tier's `batch.max` (topology/local.toml's 32 when absent); a batch's
#   activations are most of a convolutional tier's memory under load
#   default: mnist:200:20 mnist-cnn:200:20 mnist-resnet:50:30 (`ddnn demo` sends one record per
#   produce request; offered 1,000/s the sqlite test broker took 282 s to accept 20,000 and
#   stalled the tiers' fetches, 200/s it sustains here; resnet: one core of edge is ~65/s)
#
# DDNN_FOOTPRINT_STORAGE=memory runs the broker on tansu's in-memory storage, which accepts
# 1,000 single-record produce requests a second (the tiers' memory does not depend on it).
# Prints one markdown row per tier. Needs scripts/setup.sh and Docker; builds the image when
# it is missing. A fresh broker per family.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ddnn/env
IMAGE=${DDNN_IMAGE:-ddnn:local}
BIN=${DDNN_BIN:-target/release/ddnn}
TANSU=${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}
[ $# -gt 0 ] || set -- mnist:200:20 mnist-cnn:200:20 mnist-resnet:50:30
case ${DDNN_FOOTPRINT_STORAGE:-sqlite} in
  sqlite) STORAGE=sqlite://t.db ;;
  memory) STORAGE=memory://tansu/ ;;
  *) echo "DDNN_FOOTPRINT_STORAGE: sqlite or memory, not ${DDNN_FOOTPRINT_STORAGE}" >&2; exit 2 ;;
esac
docker image inspect "$IMAGE" >/dev/null 2>&1 || bash scripts/images.sh all
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/ddnn-footprint.XXXXXX)
names=() bpid=
cleanup() {
  for n in "${names[@]}"; do docker rm -f "$n" >/dev/null 2>&1 || true; done
  [ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# The container's CPU time in ns (cgroup v1 cpuacct, else v2 cpu.stat).
cpu_ns() {
  local id=$1 f
  for f in /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage /sys/fs/cgroup/cpu,cpuacct/docker/$id/cpuacct.usage; do
    [ -f "$f" ] && { cat "$f"; return; }
  done
  for f in /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat /sys/fs/cgroup/docker/$id/cpu.stat; do
    [ -f "$f" ] && { awk '$1=="usage_usec"{print $2*1000}' "$f"; return; }
  done
  echo "no cpu accounting found for container $id" >&2; exit 1
}
metric() { curl -fs "http://127.0.0.1:$1/metrics" | awk -v m="$2" -v l="tier=\"$3\"" '$1 ~ "^"m"\\{" && index($1, l) {s+=$2} END{print s+0}'; }
echo "| family | tier | rate offered (msg/s) | tier's input (msg) | input rate (msg/s) | peak RSS (MiB) | CPU per message (µs) | end-to-end p50 / p99 (ms) |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "$@"; do
  IFS=: read -r family rate secs batch <<<"$spec"
  batch=${batch:-32}
  [ -f "models/$family/edge.onnx" ] || { echo "no models/$family" >&2; exit 2; }
  port=$(free_port)
  mkdir -p "$dir/$family"
  (cd "$dir/$family" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "$STORAGE" >broker.log 2>&1) &
  bpid=$!
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  topo=$dir/$family/topology.toml
  # The image's models, by absolute path; the host's copy of the same file for `ddnn demo`.
  # No `workers` line: the default, up to one worker per available core, is one in this box.
  sed -e "s#\"\.\./models/mnist/#\"/opt/ddnn/models/$family/#" -e "s#127.0.0.1:9092#127.0.0.1:$port#" \
    -e '/^workers = /d' -e "s/batch = { max = 32,/batch = { max = $batch,/" topology/local.toml >"$topo"
  sed -e "s#\"/opt/ddnn/models/#\"$(pwd)/models/#" "$topo" >"$dir/$family/host.toml"
  declare -A mport=() cid=()
  for tier in cloud fog edge; do
    mport[$tier]=$(free_port)
    n=ddnn-footprint-$$-$family-$tier
    names+=("$n")
    cid[$tier]=$(docker run -d --name "$n" --network host --cpus 1 --memory 512m \
      -v "$dir/$family:/fp:ro" -e "DDNN__METRICS__LISTEN=127.0.0.1:${mport[$tier]}" \
      -e "DDNN_HEALTH_PORT=${mport[$tier]}" -e RUST_LOG=warn \
      "$IMAGE" node --topology /fp/topology.toml --tier "$tier" --fetch-mode adaptive)
  done
  for tier in cloud fog edge; do
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:${mport[$tier]}/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
    curl -fs "http://127.0.0.1:${mport[$tier]}/readyz" >/dev/null || { docker logs --tail 20 "${cid[$tier]}"; exit 1; }
  done
  declare -A c0=()
  for tier in edge fog cloud; do c0[$tier]=$(cpu_ns "${cid[$tier]}"); done
  count=$((rate * secs))
  t0=$(date +%s.%N)
  ORT_DYLIB_PATH=$ORT_DYLIB_PATH "$BIN" demo --topology "$dir/$family/host.toml" --digits models/heldout.bin \
    --count "$count" --rate "$rate" --timeout-s 600 >"$dir/$family/demo.out" 2>&1 || true
  t1=$(date +%s.%N)
  answered=$(awk '/^answered:/{print $2; exit}' "$dir/$family/demo.out")
  lat=$(grep -o 'p50/p95/p99 [0-9./]* ms' "$dir/$family/demo.out" | awk '{split($2,a,"/"); print a[1] " / " a[3]}')
  [ "${answered:-0}" = "$count" ] || { echo "$family: answered ${answered:-0} of $count" >&2; tail "$dir/$family/demo.out" >&2; }
  for tier in edge fog cloud; do
    in=$(metric "${mport[$tier]}" ddnn_messages_in_total "$tier")
    c1=$(cpu_ns "${cid[$tier]}")
    pid=$(docker inspect -f '{{.State.Pid}}' "${cid[$tier]}")
    hwm=$(awk '/^VmHWM/{printf "%.0f", $2/1024}' "/proc/$pid/status")
    label=$family; [ "$batch" = 32 ] || label="$family (batch $batch)"
    awk -v f="$label" -v t="$tier" -v r="$rate" -v nin="$in" -v a="$t0" -v b="$t1" -v c0="${c0[$tier]}" -v c1="$c1" \
      -v hwm="$hwm" -v lat="$lat" 'BEGIN {
        us = nin > 0 ? (c1 - c0) / 1000 / nin : 0
        printf "| %s | %s | %s | %d | %.0f | %s | %.0f | %s |\n", f, t, (t == "edge" ? r : "-"), nin, nin / (b - a), hwm, us, lat }'
  done
  for tier in edge fog cloud; do docker rm -f "${cid[$tier]}" >/dev/null; done
  kill "$bpid"; wait "$bpid" 2>/dev/null || true; bpid=
  unset mport cid c0
done
