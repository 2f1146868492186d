#!/usr/bin/env bash
# Idle cost vs latency of `ddnn node --tier all` on topology/local.toml with the local tansu
# broker, for each idle fetch cap given (ms):
#   scripts/measure-idle.sh [--idle-s 60] 5 50 100 200
# Per cap: a fresh broker; 200 warm-up digits; then IDLE_S seconds with nothing sent, the CPU
# of the node and of the broker over the last 10 s of it (% of one core); then one digit and
# its round trip (the first record after the pause; five such, 5 s apart: median/max); then
# 2,000 digits at 200/s (p50/p99).
# Prints one line per cap. Needs scripts/setup.sh (tansu, the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ddnn/env
IDLE_S=60
if [ "${1:-}" = "--idle-s" ]; then IDLE_S=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: $0 [--idle-s S] CAP_MS..." >&2; exit 2; }
BIN=${DDNN_BIN:-target/release/ddnn}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
node_pid=
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  scripts/broker.sh stop --data "$data" >/dev/null 2>&1 || true
}
trap cleanup EXIT
printf '%-8s %-10s %-12s %-10s %-18s %s\n' cap_ms node_cpu broker_cpu sum 'first_after_idle(med/max)' "200/s p50/p99"
for cap in "$@"; do
  data=$(mktemp -d /tmp/ddnn-idle.XXXXXX)
  scripts/broker.sh start --data "$data" >/dev/null
  "$BIN" node --topology topology/local.toml --fetch-mode adaptive --idle-fetch-wait-ms "$cap" >"$data/node.log" 2>&1 &
  node_pid=$!
  for _ in $(seq 1 200); do curl -fs http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" demo --topology topology/local.toml --count 200 --rate 200 >/dev/null 2>&1
  sleep $((IDLE_S - 10))
  b=$(cat "$data/broker.pid")
  n0=$(ticks "$node_pid"); b0=$(ticks "$b"); sleep 10; n1=$(ticks "$node_pid"); b1=$(ticks "$b")
  ncpu=$(awk -v a="$n0" -v b="$n1" -v hz="$hz" 'BEGIN{printf "%.1f%%", (b-a)/hz/10*100}')
  bcpu=$(awk -v a="$b0" -v b="$b1" -v hz="$hz" 'BEGIN{printf "%.1f%%", (b-a)/hz/10*100}')
  sum=$(awk -v a="$n0" -v b="$n1" -v c="$b0" -v d="$b1" -v hz="$hz" 'BEGIN{printf "%.1f%%", (b-a+d-c)/hz/10*100}')
  firsts=()
  for i in 1 2 3 4 5; do
    [ "$i" -gt 1 ] && sleep 5   # idle again: the waits are back at the cap
    firsts+=("$("$BIN" demo --topology topology/local.toml --count 1 --rate 1 2>/dev/null | grep -o 'p50/p95/p99 [0-9./]* ms' | awk '{print $2}' | cut -d/ -f1)")
  done
  first=$(printf '%s\n' "${firsts[@]}" | sort -n | awk '{a[NR]=$1} END{printf "%s/%s", a[int((NR+1)/2)], a[NR]}')
  load=$("$BIN" demo --topology topology/local.toml --count 2000 --rate 200 2>/dev/null | grep -o 'p50/p95/p99 [0-9./]* ms' | awk '{split($2,a,"/"); print a[1] "/" a[3]}')
  printf '%-8s %-10s %-12s %-10s %-18s %s\n' "$cap" "$ncpu" "$bcpu" "$sum" "${first} ms" "${load} ms"
  kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=
  scripts/broker.sh stop --data "$data" >/dev/null; rm -rf "$data"
done
