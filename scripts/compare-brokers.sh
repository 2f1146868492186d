#!/usr/bin/env bash
# Compares the Kafka-protocol test brokers for ddnn (bench/BROKERS.md, "Full comparison").
#
#   scripts/compare-brokers.sh pg-start [NAME=VALUE...]   private PostgreSQL 15 cluster (Debian's
#                                                          postgresql package), settings as -c
#   scripts/compare-brokers.sh pg-stop | pg-status
#   scripts/compare-brokers.sh idle       CONFIG   broker + `ddnn node --tier all`, idle 20 s:
#                                                  CPU of each over the last 10 s
#   scripts/compare-brokers.sh durability CONFIG [RUNS]   acks=all producer, kill -9 the broker
#                                                  after 3 s, restart on the same data, read back
#                                                  (KILL=postgres: crash PostgreSQL too)
#   scripts/compare-brokers.sh interop    CONFIG   confluent-kafka produce/consume/group commit,
#                                                  rskafka (ddnn demo through `ddnn node`)
#   scripts/compare-brokers.sh ramp       CONFIG [OUT]   ddnn-bench ramp, relay and elastic (from
#                                                  RAMP_START=250 by RAMP_STEP=250 msg/s, 4 s steps)
#   scripts/compare-brokers.sh rtt        CONFIG [OUT]   ddnn-bench constant 200 msg/s, 20 s
#   scripts/compare-brokers.sh produce-rate CONFIG  confluent-kafka produce rate at 1, 10, 100,
#                                                  500 records per request (one in flight)
#   scripts/compare-brokers.sh groups CONFIG [CHECKS]   scripts/probe-groups.py on that storage
#   scripts/compare-brokers.sh sizes               binary sizes and versions
#
# CONFIG: tansu-sqlite | tansu-memory | tansu-postgres | nisshi-sqlite | nisshi-postgres
#
# Binaries (override by env): TANSU_BIN (~/.cache/ddnn/tansu/bin/tansu), TANSU_PG_BIN
# (~/.cache/ddnn/tansu-pg/bin/tansu: tansu built with the postgres feature), NISSHI_BIN
# (~/.cache/ddnn/nisshi/bin/nisshi), DDNN_BIN / DDNN_BENCH_BIN (target/release/ddnn[-bench]),
# DDNN_PYTHON (.ddnn/pyenv/bin/python, with confluent-kafka). ORT_DYLIB_PATH from .ddnn/env.
# PostgreSQL: PG_PORT (55432), PG_DATA (/var/tmp/ddnn-pg); each broker start on a postgres
# config gets a fresh database `ddnn_cmp`, for tansu with its schema (TANSU_PG_SCHEMA: a file; default
# etc/initdb.d/010-schema.sql of the tansu repository at v0.6.0, from TANSU_REPO (a git dir) or
# GitHub). PG_URL_OPTIONS is appended to the broker's storage URL (e.g.
# `?options=-c%20synchronous_commit%3Doff`: a per-session setting).
#
# Measurements that need a quiet machine (idle, ramp, rtt) should be run under
# `flock /tmp/ddnn-cpu.lock`. Every line printed starts with the check and the config; each
# check prints the date and /proc/loadavg first. Every process started here is killed by PID on
# exit, and every temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
[ -f .ddnn/env ] && . .ddnn/env

TANSU_BIN=${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}
TANSU_PG_BIN=${TANSU_PG_BIN:-$HOME/.cache/ddnn/tansu-pg/bin/tansu}
NISSHI_BIN=${NISSHI_BIN:-$HOME/.cache/ddnn/nisshi/bin/nisshi}
DDNN_BIN=${DDNN_BIN:-target/release/ddnn}
DDNN_BENCH_BIN=${DDNN_BENCH_BIN:-target/release/ddnn-bench}
PY=${DDNN_PYTHON:-.ddnn/pyenv/bin/python}
PG_PORT=${PG_PORT:-55432}
PG_DATA=${PG_DATA:-/var/tmp/ddnn-pg}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_DB=ddnn_cmp
PG_URL_OPTIONS=${PG_URL_OPTIONS:-}
TANSU_REPO=${TANSU_REPO:-/work/.mirror/tansu-io+tansu/repo}
HZ=$(getconf CLK_TCK)

PIDS=()      # every process started here, killed by PID on exit
TMPS=()      # every temp dir made here, removed on exit
cleanup() {
  local p _
  exec 2>/dev/null  # no job notices ("Killed") for what is ended here on purpose
  for p in "${PIDS[@]}"; do pkill -P "$p" || true; kill "$p" || true; done
  for p in "${PIDS[@]}"; do  # children first (ddnn-bench's broker and tiers), then it
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    pkill -9 -P "$p" || true; kill -9 "$p" || true; wait "$p" || true
  done
  for p in "${TMPS[@]}"; do rm -rf "$p"; done
}
trap cleanup EXIT
forget() { # PID has been waited for: not ours to kill any more
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stamp() { echo "# $1 $(date -u +%FT%TZ) loadavg $(cut -d' ' -f1-3 /proc/loadavg)"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU ticks of every PostgreSQL process (backends come and go: a sum over those alive now)
pg_ticks() {
  local t=0 p v
  for p in $(pgrep -u postgres || true); do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0); t=$((t + v))
  done
  echo "$t"
}
pct() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz/s*100}'; }
as_pg() { runuser -u postgres -- "$@"; }
psql_() { as_pg "$PG_BIN/psql" -h "$PG_DATA" -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt "$@"; }

# --- PostgreSQL ------------------------------------------------------------------------------

pg_start() {
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PG_DATA"
    # trust on loopback and the socket: a throwaway cluster that only this machine reaches
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust >/dev/null
  fi
  local opts=(-c "port=$PG_PORT" -c "listen_addresses=127.0.0.1" -c "unix_socket_directories=$PG_DATA")
  local kv
  for kv in "$@"; do opts+=(-c "$kv"); done
  # pg_ctl passes -o to postgres: quote each setting
  local o="" x
  for x in "${opts[@]}"; do o+="$(printf '%q ' "$x")"; done
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -o "$o" -w start >/dev/null
  : >"$PG_DATA.settings"  # for a restart after a crash drill
  [ $# -eq 0 ] || printf '%s\n' "$@" >"$PG_DATA.settings"
  echo "postgres on 127.0.0.1:$PG_PORT (data $PG_DATA), settings: $*"
  psql_ -d postgres -c "select name || '=' || setting from pg_settings where name in
    ('synchronous_commit','fsync','wal_writer_delay','commit_delay','shared_buffers','max_connections','wal_sync_method')"
}
pg_restart_saved() {
  local saved=()
  [ -s "$PG_DATA.settings" ] && mapfile -t saved <"$PG_DATA.settings"
  pg_start "${saved[@]}"
}
pg_stop() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true; echo "postgres stopped"; }

tansu_schema() {
  if [ -n "${TANSU_PG_SCHEMA:-}" ]; then cat "$TANSU_PG_SCHEMA"
  elif git -C "$TANSU_REPO" rev-parse -q --verify v0.6.0 >/dev/null 2>&1; then
    git -C "$TANSU_REPO" show v0.6.0:etc/initdb.d/010-schema.sql
  else
    curl -fsSL https://raw.githubusercontent.com/tansu-io/tansu/v0.6.0/etc/initdb.d/010-schema.sql
  fi
}

# pg_fresh_db CONFIG: a fresh, empty database; for tansu with tansu's schema (the crate does
# not ship it), for nisshi empty (nisshi-storage-sql creates and versions its own schema).
pg_fresh_db() {
  port_open "$PG_PORT" || { echo "postgres is not running: $0 pg-start" >&2; exit 1; }
  psql_ -d postgres -c "drop database if exists $PG_DB with (force)" -c "create database $PG_DB" 2>&1 \
    | grep -v 'does not exist, skipping' || true
  case "$1" in tansu-*) tansu_schema | psql_ -d "$PG_DB" -f - >/dev/null ;; esac
}

# --- brokers ---------------------------------------------------------------------------------

# Sets BIN and STORAGE for CONFIG (STORAGE relative to the broker's working dir for sqlite).
config() {
  case "$1" in
    tansu-sqlite) BIN=$TANSU_BIN; STORAGE=sqlite://tansu.db ;;
    tansu-memory) BIN=$TANSU_BIN; STORAGE=memory://tansu/ ;;
    tansu-postgres) BIN=$TANSU_PG_BIN; STORAGE="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB$PG_URL_OPTIONS" ;;
    nisshi-sqlite) BIN=$NISSHI_BIN; STORAGE=sqlite://tansu.db ;;
    nisshi-postgres) BIN=$NISSHI_BIN; STORAGE="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB$PG_URL_OPTIONS" ;;
    *) echo "unknown config $1" >&2; exit 2 ;;
  esac
  [ -x "$BIN" ] || { echo "$1: no broker binary at $BIN" >&2; exit 1; }
}
is_pg() { case "$1" in *-postgres) return 0 ;; *) return 1 ;; esac; }

# broker_start DIR PORT: starts BIN on STORAGE with DIR as working dir; sets BROKER_PID.
broker_start() {
  local dir=$1 port=$2 url="tcp://127.0.0.1:$2"
  (cd "$dir" && exec "$BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
      --storage-engine "$STORAGE" >>broker.log 2>&1) &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  local _
  for _ in $(seq 1 300); do
    port_open "$port" && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || { echo "broker exited; log:" >&2; tail -20 "$dir/broker.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "broker did not open port $port in 30 s" >&2; exit 1
}

setup_broker() { # CONFIG: config + fresh data + start; sets DIR PORT BROKER_PID
  config "$1"
  DIR=$(mktemp -d /tmp/ddnn-cmp.XXXXXX); TMPS+=("$DIR")
  PORT=$(free_port)
  if is_pg "$1"; then pg_fresh_db "$1"; fi
  broker_start "$DIR" "$PORT"
}

# --- checks ----------------------------------------------------------------------------------

check_idle() {
  local cfg=$1; stamp "idle $cfg"
  setup_broker "$cfg"
  local mport; mport=$(free_port)
  DDNN_BROKERS_LOCAL=127.0.0.1:$PORT DDNN__METRICS__LISTEN=127.0.0.1:$mport \
    "$DDNN_BIN" node --tier all --topology topology/local.toml >"$DIR/node.log" 2>&1 &
  local node=$!; PIDS+=("$node")
  local _
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null || { echo "node not ready; log:" >&2; tail "$DIR/node.log" >&2; exit 1; }
  sleep 10
  local n0 b0 p0 n1 b1 p1 pg=""
  n0=$(ticks "$node"); b0=$(ticks "$BROKER_PID"); p0=$(pg_ticks)
  sleep 10
  n1=$(ticks "$node"); b1=$(ticks "$BROKER_PID"); p1=$(pg_ticks)
  is_pg "$cfg" && pg=" postgres $(pct "$p0" "$p1" 10)%"
  echo "idle $cfg: broker $(pct "$b0" "$b1" 10)%$pg node $(pct "$n0" "$n1" 10)% of one core (last 10 s of 20 s idle after ready)"
  stamp "idle $cfg done"
}

# KILL=broker (default): kill -9 the broker. KILL=postgres (postgres configs): stop PostgreSQL
# with `pg_ctl -m immediate` (its crash: no checkpoint, WAL buffers not written), kill -9 the
# broker too, restart both.
check_durability() {
  local cfg=$1 runs=${2:-3} r kill=${KILL:-broker} note=""
  config "$cfg"
  if is_pg "$cfg"; then note=", synchronous_commit=$(psql_ -d postgres -c 'show synchronous_commit')"; fi
  for r in $(seq 1 "$runs"); do
    stamp "durability $cfg run $r (kill: $kill)"
    setup_broker "$cfg"
    "$PY" scripts/broker-durability.py produce "127.0.0.1:$PORT" durable "$DIR/acked.txt" --seconds 6 &
    local prod=$!; PIDS+=("$prod")
    sleep 3
    if [ "$kill" = postgres ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null
      echo "durability $cfg run $r: postgres stopped -m immediate at $(date -u +%T.%N | cut -c1-12)"
    fi
    kill -9 "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; forget "$BROKER_PID"
    echo "durability $cfg run $r: broker killed with -9 at $(date -u +%T.%N | cut -c1-12)"
    wait "$prod"; forget "$prod"
    if [ "$kill" = postgres ]; then pg_restart_saved >/dev/null; fi
    broker_start "$DIR" "$PORT"
    "$PY" scripts/broker-durability.py read "127.0.0.1:$PORT" durable "$DIR/acked.txt" \
      --label "durability $cfg run $r (kill: $kill$note)" || {
      local keep; keep=/tmp/ddnn-cmp-lost-$cfg-$(date -u +%H%M%S).log
      grep -v 'ConnectionRefused' "$DIR/broker.log" | tail -200 >"$keep"
      echo "durability $cfg run $r: records lost; the broker's log (tail) kept in $keep"
    }
    [ -z "${SHOW_LOG:-}" ] || tail -n "$SHOW_LOG" "$DIR/broker.log"
    kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; forget "$BROKER_PID"
  done
}

check_interop() {
  local cfg=$1; stamp "interop $cfg"
  setup_broker "$cfg"
  "$PY" scripts/broker-durability.py interop "127.0.0.1:$PORT" --label "interop $cfg"
  # rskafka: ddnn itself (a node with all three tiers and the demo client)
  local mport; mport=$(free_port)
  DDNN_BROKERS_LOCAL=127.0.0.1:$PORT DDNN__METRICS__LISTEN=127.0.0.1:$mport \
    "$DDNN_BIN" node --tier all --topology topology/local.toml >"$DIR/node.log" 2>&1 &
  local node=$!; PIDS+=("$node")
  local _
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  local out
  out=$(DDNN_BROKERS_LOCAL=127.0.0.1:$PORT timeout 120 "$DDNN_BIN" demo --topology topology/local.toml --count 200 --rate 100 2>&1 | grep -o "summary: sent [0-9]*, answered [0-9]*, lost [0-9]*, duplicates [0-9]*" || echo "no answer")
  echo "interop $cfg: rskafka (ddnn node + demo, 200 digits): $(echo "$out" | tr '\n' ' ')"
  stamp "interop $cfg done"
}

check_produce_rate() {
  local cfg=$1; stamp "produce-rate $cfg"
  setup_broker "$cfg"
  local b0 p0; b0=$(ticks "$BROKER_PID"); p0=$(pg_ticks); local t0=$SECONDS
  "$PY" scripts/broker-durability.py rate "127.0.0.1:$PORT" --label "produce-rate $cfg"
  local dt=$((SECONDS - t0))
  echo "produce-rate $cfg: over the ${dt} s: broker $(pct "$b0" "$(ticks "$BROKER_PID")" "$dt")% postgres $(pct "$p0" "$(pg_ticks)" "$dt")% of one core"
  stamp "produce-rate $cfg done"
}

# groups CONFIG [CHECKS]: scripts/probe-groups.py on CONFIG's broker and storage
check_groups() {
  local cfg=$1 checks=${2:-split,leave,commit,metadata,describe_groups,expiry1}; stamp "groups $cfg"
  config "$cfg"
  if is_pg "$cfg"; then pg_fresh_db "$cfg"; fi
  "$PY" scripts/probe-groups.py "$BIN" --storage "$STORAGE" --checks "$checks" \
    --json "bench/results/brokers/groups-$cfg.json" | sed "s/^/groups $cfg: /"
  stamp "groups $cfg done"
}

bench_out() { echo "${1:-bench/results/brokers/$2-$3-$(date -u +%H%M)}"; }

# sample_cpu BENCH_PID: every 2 s while ddnn-bench runs, the CPU (% of one core) of its broker,
# of PostgreSQL (all its processes), and of the ddnn tiers it started, with the load average.
sample_cpu() {
  local bench=$1 broker="" b0 b1 p0 p1 t0 t1 k
  echo "t_s broker_pct postgres_pct tiers_pct loadavg1"
  local start=$SECONDS
  while kill -0 "$bench" 2>/dev/null; do
    [ -n "$broker" ] || broker=$(pgrep -P "$bench" -f ' broker --listener-url' | head -1 || true)
    [ -n "$broker" ] || { sleep 0.5; continue; }
    b0=$(ticks "$broker" 2>/dev/null || echo 0); p0=$(pg_ticks); t0=$(tier_ticks "$bench" "$broker")
    sleep 2
    kill -0 "$broker" 2>/dev/null || break
    b1=$(ticks "$broker" 2>/dev/null || echo "$b0"); p1=$(pg_ticks); t1=$(tier_ticks "$bench" "$broker")
    k=$(cut -d' ' -f1 /proc/loadavg)
    echo "$((SECONDS - start)) $(pct "$b0" "$b1" 2) $(pct "$p0" "$p1" 2) $(pct 0 "$(tier_delta "$t0" "$t1")" 2) $k"
  done
}
tier_ticks() { # "pid ticks" of each ddnn process under ddnn-bench (all but the broker)
  local p v
  for p in $(pgrep -P "$1" || true); do
    [ "$p" = "$2" ] && continue
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) && echo "$p $v"
  done
}
tier_delta() { # ticks used between two tier_ticks lists, by the processes in both
  awk 'NR==FNR { a[$1] = $2; next } ($1 in a) { d += $2 - a[$1] } END { print d + 0 }' <(echo "$1") <(echo "$2")
}

# run_bench CFG OUT ARGS...: ddnn-bench on CFG's broker with the CPU sampler beside it. The
# tiers run `ddnn node --fetch-mode $NODE_FETCH_MODE` (default adaptive: tansu and nisshi hold
# every fetch for its whole wait, and `auto` long-polls 500 ms per tier until it has seen that,
# which puts seconds of start-up latency into the first 4 s steps of a ramp), plus NODE_ARGS
# (e.g. `--fetch-wait-ms 50`).
run_bench() {
  local cfg=$1 out=$2; shift 2
  mkdir -p "$out"
  if is_pg "$cfg"; then pg_fresh_db "$cfg"; fi
  local wrap real; wrap=$(mktemp -d /tmp/ddnn-cmp-bin.XXXXXX); TMPS+=("$wrap")
  real=$(realpath "$DDNN_BIN")
  {
    echo '#!/bin/sh'
    echo "if [ \"\$1\" = node ]; then shift; exec '$real' node --fetch-mode ${NODE_FETCH_MODE:-adaptive} ${NODE_ARGS:-} \"\$@\"; fi"
    echo "exec '$real' \"\$@\""
  } >"$wrap/ddnn"
  chmod +x "$wrap/ddnn"
  # --shared-broker: the sampler follows one broker process, and a PostgreSQL-backed broker
  # shares its database between modes anyway (bench/BROKERS.md was measured this way).
  "$DDNN_BENCH_BIN" --tansu-bin "$BIN" --broker-storage "$STORAGE" --ddnn-bin "$wrap/ddnn" \
    --shared-broker --models mnist --out "$out" "$@" >"$out/bench.log" 2>&1 &
  local bench=$!; PIDS+=("$bench")
  sample_cpu "$bench" >"$out/cpu.txt" &
  local sampler=$!; PIDS+=("$sampler")
  local rc=0
  wait "$bench" || rc=$?
  wait "$sampler" || true
  [ "$rc" = 0 ] || { echo "ddnn-bench failed (rc $rc):" >&2; tail -20 "$out/bench.log" >&2; }
  prune_out "$out"
  return 0
}
cpu_summary() { # the busiest 2 s of the broker and of postgres during the run
  awk 'BEGIN { b = 0; p = 0; t = 0 } NR>1 { if ($2>b) b=$2; if ($3>p) p=$3; if ($4>t) t=$4 } END { printf "peak CPU over 2 s: broker %s%%, postgres %s%%, ddnn tiers %s%%\n", b, p, t }' "$1/cpu.txt"
}

check_ramp() {
  local cfg=$1 out; out=$(bench_out "${2:-}" ramp "$cfg")
  config "$cfg"; stamp "ramp $cfg"
  run_bench "$cfg" "$out" --modes relay,elastic ramp --start "${RAMP_START:-250}" --step "${RAMP_STEP:-250}" --step-secs 4
  grep -E 'ramp ' "$out/bench.log" | sed "s/^/ramp $cfg: /"
  echo "ramp $cfg: $(cpu_summary "$out")"
  grep -o '"saturation_msg_s": [0-9.]*' "$out/summary.json" | sed "s/^/ramp $cfg: /" || true
  echo "ramp $cfg: results in $out"
  stamp "ramp $cfg done"
}

check_rtt() {
  local cfg=$1 out; out=$(bench_out "${2:-}" rtt "$cfg")
  config "$cfg"; stamp "rtt $cfg"
  run_bench "$cfg" "$out" --modes elastic constant --rate 200 --secs 20
  grep -E '^\|' "$out/summary.md" | head -8 | sed "s/^/rtt $cfg: /" || true
  echo "rtt $cfg: $(cpu_summary "$out")"
  echo "rtt $cfg: results in $out"
  stamp "rtt $cfg done"
}

# keep the small text results (summary.json/md, bench.log, cpu.txt); plots and the per-message
# CSV are removed
prune_out() { rm -f "$1"/*.png "$1"/messages.csv; }

sizes() {
  local b
  for b in "$TANSU_BIN" "$TANSU_PG_BIN" "$NISSHI_BIN"; do
    [ -x "$b" ] && echo "$b: $(stat -c %s "$b") bytes, $("$b" --version 2>/dev/null | head -1)"
  done
}

cmd=${1:-}; shift || true
case "$cmd" in
  pg-start) pg_start "$@"; trap - EXIT ;;
  pg-stop) pg_stop ;;
  pg-status) as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status ;;
  idle) check_idle "$@" ;;
  durability) check_durability "$@" ;;
  interop) check_interop "$@" ;;
  ramp) check_ramp "$@" ;;
  rtt) check_rtt "$@" ;;
  produce-rate) check_produce_rate "$@" ;;
  groups) check_groups "$@" ;;
  sizes) sizes ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
