#!/usr/bin/env bash
# The continuum as three hosts on this Docker engine: edge, fog and cloud are separate compose
# projects, each on its own network with its own broker (as in topology/continuum.toml), started
# with the README's compose commands and an .env per host naming the other hosts' brokers. The
# hosts reach each other only through WAN links (ddnn-wan, a userspace delay proxy: this kernel
# has no tc netem): edge<->fog 20 ms and fog<->cloud 50 ms one way (edge<->cloud 70 ms, the two
# in series), optional jitter. The edge tier runs under --cpus 1 --memory 512m.
#
#   scripts/continuum.sh check           the paper's workload across the hosts, then teardown
#   scripts/continuum.sh drills [NAME..] check, then fault drills (kill9 broker stop cut; default
#                                        all; `scale` too, when named), then teardown
#   scripts/continuum.sh scale           fresh hosts, the fog host with 3 fog containers (one
#                                        consumer group): the fog input's partitions spread over
#                                        the three, the paper's workload all answered; teardown
#   scripts/continuum.sh edge-bench [mnist|mnist-cnn|mnist-resnet] [RATE.. | drain:N ..]
#                                        the edge host's CPU per message, peak RSS and the rates
#                                        it keeps up with; drain:N: the rate at which it drains a
#                                        backlog of N digits (bench/CONTINUUM.md)
#   scripts/continuum.sh up | down       bring the hosts up and leave them / remove everything
#
# Prints one line per run:  continuum: sent N, answered N, lost 0, duplicates D, p50/p95/p99 ...
# and one per drill:        drill <name>: ... ; it fails on any lost key, on a duplicate after a
# graceful stop, on an accuracy that differs from the model card's, on a drill that did not
# happen as planned (no restart, no unhealthy health check during the cut, ...), or on fog
# containers that do not share the fog input's partitions.
#
# Needs: scripts/setup.sh run (release builds, tansu), Docker. Builds what it misses with
# scripts/images.sh (base, broker, wan, runtime). Removes every container, network and volume it
# started (base and product images stay cached; scripts/images.sh clean removes them).
#
# Environment: CONTINUUM_PREFIX (ddnnct), WAN_EDGE_FOG (20ms), WAN_FOG_CLOUD (50ms),
# WAN_JITTER (0ms), CONTINUUM_COUNT (2000), CONTINUUM_RATE (200), DDNN_IMAGE (ddnn:local),
# SCALE_FOG (3: fog containers of the scale step),
# KEEP_UP=1 (check: leave the hosts running), SKIP_IMAGES=1 (use the images as they are).
# Work files and logs: .ddnn/continuum/ (.ddnn/continuum-<prefix>/ for another prefix).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
[ -f .ddnn/env ] && . .ddnn/env
P=${CONTINUUM_PREFIX:-ddnnct}
export DDNN_IMAGE=${DDNN_IMAGE:-ddnn:local}
export DDNN_BROKER_IMAGE=${DDNN_BROKER_IMAGE:-ddnn-local/tansu:0.6.0}
export DDNN_WAN_IMAGE=${DDNN_WAN_IMAGE:-ddnn-local/wan:latest}
EDGE_FOG=${WAN_EDGE_FOG:-20ms}
FOG_CLOUD=${WAN_FOG_CLOUD:-50ms}
JITTER=${WAN_JITTER:-0ms}
COUNT=${CONTINUUM_COUNT:-2000}
RATE=${CONTINUUM_RATE:-200}
WORK=$ROOT/.ddnn/continuum
[ "$P" = ddnnct ] || WORK=$ROOT/.ddnn/continuum-$P
HOSTS=(edge fog cloud)
LABEL=org.ddnn.continuum=$P
T0=$(date +%s.%N)
say() { printf '[continuum %6.1fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$*"; }
die() { say "FAILED: $*"; exit 1; }
ms() { awk -v d="$1" 'BEGIN { if (d ~ /ms$/) { sub(/ms$/, "", d); print d + 0 } else if (d ~ /s$/) { sub(/s$/, "", d); print d * 1000 } else print d + 0 }'; }

# docker compose (v2) when present, docker-compose (v1) otherwise.
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
# One host = one compose project with its own .env, the product compose file and the CI override.
host() {
  local h=$1; shift
  "${COMPOSE[@]}" -p "$P-$h" --env-file "$WORK/$h.env" -f docker-compose.yml -f scripts/continuum/compose.ci.yml "$@"
}
net() { docker network ls -q --filter "name=^$P-$1_default\$" | head -n1 | xargs -r docker network inspect -f '{{.Name}}'; }
cid() { host "$1" ps -q "$2" | head -n1; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1" 2>/dev/null || echo gone; }

wait_healthy() { # container, what, seconds
  local c=$1 deadline=$(($(date +%s) + $3)) s
  while :; do
    s=$(health "$c")
    [ "$s" = healthy ] && return 0
    [ "$(date +%s)" -ge "$deadline" ] && { docker logs --tail 30 "$c" 2>&1 | sed 's/^/    /'; die "$2 not healthy after $3 s (status $s)"; }
    sleep 0.5
  done
}

images() {
  # SKIP_IMAGES=1: use the images as they are (e.g. while another run rebuilds them).
  [ "${SKIP_IMAGES:-0}" = 0 ] || return 0
  [ -x target/release/ddnn ] && [ -x target/release/ddnn-wan ] || cargo build --release -p ddnn -p ddnn-wan
  bash scripts/images.sh base
  docker image inspect "$DDNN_BROKER_IMAGE" >/dev/null 2>&1 || bash scripts/images.sh broker
  bash scripts/images.sh wan
  bash scripts/images.sh runtime
}

write_env() {
  mkdir -p "$WORK"
  for h in "${HOSTS[@]}"; do
    cat >"$WORK/$h.env" <<ENV
# .env of the $h host (written by scripts/continuum.sh; see .env.example)
DDNN_IMAGE=$DDNN_IMAGE
DDNN_BROKER_IMAGE=$DDNN_BROKER_IMAGE
DDNN_TOPOLOGY_FILE=${TOPOLOGY_FILE:-continuum.toml}
# The other hosts' brokers, by the names their WAN links answer to on this host's network.
DDNN_BROKERS_EDGE=edge-broker:9092
DDNN_BROKERS_FOG=fog-broker:9092
DDNN_BROKERS_CLOUD=cloud-broker:9092
BROKER_ADVERTISED_HOST=$h-broker
# Published on loopback, host port chosen by Docker (127.0.0.1::9092): three hosts on one
# machine never ask for the same port (ports picked ahead by the script once collided in CI).
BROKER_PORT=127.0.0.1:
EDGE_METRICS_PORT=127.0.0.1:
FOG_METRICS_PORT=127.0.0.1:
CLOUD_METRICS_PORT=127.0.0.1:
RUST_LOG=info,rskafka=error
BENCH_COUNT=$COUNT
BENCH_RATE=$RATE
BENCH_TIMEOUT_S=120
ENV
  done
}

# A WAN link: on network `from`, the name `to`-broker answers, delayed, and leads to `to`'s broker.
link() {
  local from=$1 to=$2 delay=$3 name="$P-wan-$1-$2"
  docker run -d --name "$name" --label "$LABEL" --network "$(net "$from")" --network-alias "$to-broker" \
    "$DDNN_WAN_IMAGE" --name "$from->$to" --listen 0.0.0.0:9092 --upstream "$to-broker-lan:9092" \
    --delay "$delay" --jitter "$JITTER" >/dev/null
  docker network connect "$(net "$to")" "$name"
}

up() {
  write_env
  say "hosts: ${HOSTS[*]} (compose: ${COMPOSE[*]}, image $DDNN_IMAGE, broker $DDNN_BROKER_IMAGE)"
  for h in "${HOSTS[@]}"; do
    host "$h" --profile broker up -d --no-build 2>&1 | sed 's/^/    /'
  done
  for h in "${HOSTS[@]}"; do wait_healthy "$(cid "$h" broker)" "$h broker" 60; done
  local edge_cloud; edge_cloud="$(($(ms "$EDGE_FOG") + $(ms "$FOG_CLOUD")))ms"
  link edge fog "$EDGE_FOG"; link fog edge "$EDGE_FOG"
  link fog cloud "$FOG_CLOUD"; link cloud fog "$FOG_CLOUD"
  link edge cloud "$edge_cloud"; link cloud edge "$edge_cloud"
  say "WAN links: edge<->fog $EDGE_FOG, fog<->cloud $FOG_CLOUD, edge<->cloud $edge_cloud one way, jitter ±$JITTER"
  # The README's per-host command: docker compose --profile broker --profile <tier> up -d
  for h in cloud fog edge; do
    host "$h" --profile broker --profile "$h" up -d --no-build 2>&1 | sed 's/^/    /'
  done
  for h in "${HOSTS[@]}"; do wait_healthy "$(cid "$h" "$h")" "$h tier" 90; done
  say "every host healthy; edge tier limits: cpus $(docker inspect -f '{{.HostConfig.NanoCpus}}' "$(cid edge edge)" | awk '{ print $1 / 1e9 }'), memory $(docker inspect -f '{{.HostConfig.Memory}}' "$(cid edge edge)" | awk '{ print $1 / 1048576 }') MiB"
}

down() {
  mkdir -p "$WORK/logs"
  for h in "${HOSTS[@]}"; do
    [ -f "$WORK/$h.env" ] || continue
    for s in broker "$h"; do
      # Every container of a scaled service: <host>-<service>.log, then -2.log, -3.log, ...
      local i=0 c
      for c in $(host "$h" ps -q "$s" 2>/dev/null || true); do
        i=$((i + 1))
        docker logs "$c" >"$WORK/logs/$h-$s$([ "$i" = 1 ] || echo "-$i").log" 2>&1 || true
      done
    done
  done
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f >/dev/null
  # Nothing to drain at teardown: kill every container at once (a compose down stops them with
  # SIGTERM one project after the other, and tiers wait for brokers already gone).
  for h in "${HOSTS[@]}"; do
    docker ps -aq --filter "label=com.docker.compose.project=$P-$h" | xargs -r docker rm -f >/dev/null
  done
  for h in "${HOSTS[@]}"; do
    [ -f "$WORK/$h.env" ] || continue
    host "$h" --profile broker --profile "$h" --profile bench down -v --remove-orphans -t 10 >/dev/null 2>&1 || true
  done
  local left
  left=$(docker ps -aq --filter "name=^$P-"; docker network ls -q --filter "name=^$P-"; docker volume ls -q --filter "name=^$P-")
  [ -z "$left" ] || say "WARNING: left behind: $left"
  say "removed every container, network and volume of $P (logs in ${WORK#"$ROOT"/}/logs)"
}

# Runs the paper's client (ddnn demo in the bench service) on the edge host. Foreground:
# `bench NAME COUNT RATE`; background: `bench_start NAME COUNT RATE` then `bench_wait NAME`.
bench_start() {
  BENCH_COUNT=$2 BENCH_RATE=$3 host edge --profile bench run -d --name "$P-bench-$1" bench >/dev/null
}
bench_wait() {
  local c="$P-bench-$1" rc
  rc=$(docker wait "$c")
  docker logs "$c" >"$WORK/bench-$1.out" 2>&1
  docker rm "$c" >/dev/null
  [ "$rc" = 0 ] || { cat "$WORK/bench-$1.out"; die "bench $1 exited $rc"; }
  grep -q '^summary: ' "$WORK/bench-$1.out" || { cat "$WORK/bench-$1.out"; die "bench $1 printed no summary"; }
}
field() { sed -n "s/^summary: .*$2 \([0-9]*\).*/\1/p" "$WORK/bench-$1.out"; }

# Accuracy and exit shares must be the model card's for the topology's model set and threshold.
card_check() {
  local out=$WORK/bench-$1.out
  python3 - "$out" <<'PY' || die "the continuum's answers differ from the model card"
import re, sys, tomllib
out = open(sys.argv[1]).read()
topo = tomllib.load(open("topology/continuum.toml", "rb"))
tiers = topo["tiers"]
models = {t["model"].rsplit("/", 1)[0].replace("../", "") for t in tiers}
rules = set()
for t in tiers[:-1]:
    rule = t.get("exit", {}).get("rule", "max-prob")
    rules.add(f"{rule} {'<=' if rule == 'entropy' else '>='} {t.get('exit', {}).get('threshold', t.get('threshold')):g}")
assert len(models) == 1 and len(rules) == 1, (models, rules)
models, rule = models.pop(), rules.pop()
card = open("models/README.md").read().split(f"### `{models}`", 1)[1].split("### ", 1)[0]
row = next(l for l in card.splitlines() if l.startswith(f"| `{rule}` |"))
cells = [c.strip() for c in row.strip("|").split("|")]
want_exits, want_acc = cells[1:-1], cells[-1]
got_acc = re.search(r"^accuracy: +([0-9.]+%)", out, re.M).group(1)
got_exits = [re.search(rf"^exits at {t['name']} +\d+ \(([0-9.]+%)\)", out, re.M).group(1) for t in tiers]
print(f"    model card ({models}, {rule}): accuracy {want_acc}, exits {'/'.join(want_exits)}; "
      f"continuum: accuracy {got_acc}, exits {'/'.join(got_exits)}")
sys.exit(0 if (got_acc, got_exits) == (want_acc, want_exits) else 1)
PY
}

check() { # [run name, default check]
  local name=${1:-check} sent answered
  say "paper workload: $COUNT held-out digits as JSON, UUID keys, X-INFERENCE-TS, $RATE msg/s into the edge broker"
  bench_start "$name" "$COUNT" "$RATE"
  bench_wait "$name"
  sed -n '/^digits sent/,/^elapsed/p' "$WORK/bench-$name.out" | sed 's/^/    /'
  sent=$(field "$name" sent); answered=$(field "$name" answered)
  [ "$COUNT" -ne 2000 ] || card_check "$name"
  echo "continuum: $(sed -n 's/^summary: //p' "$WORK/bench-$name.out")"
  [ "$sent" = "$COUNT" ] && [ "$answered" = "$sent" ] || die "sent $sent, answered $answered"
}

# Records the health-check status of a container every 0.5 s while a drill runs; the first time
# it is unhealthy, also what /healthz says.
watch_health() {
  local c=$1 out=$2 last="" s
  : >"$out"
  while :; do
    s=$(health "$c")
    if [ "$s" != "$last" ]; then
      printf '%s %s\n' "$(date +%s.%N)" "$s" >>"$out"
      if [ "$s" = unhealthy ]; then
        docker exec "$c" timeout 2 ddnn-healthcheck /healthz 2>/dev/null | head -c 300 | tr '\n' ' ' \
          | sed 's/^/    healthz: /' >>"$out" || true
        echo >>"$out"
      fi
      last=$s
    fi
    sleep 0.5
  done
}
transitions() { awk '$1 ~ /^[0-9.]+$/ { printf "%s%s", sep, $2; sep = " -> " }' "$1"; }

drill() {
  local name=$1 fog count=1500 rate=50 wpid sent answered lost dups extra=""
  [ "$name" = cut ] && count=3000
  fog=$(cid fog fog)
  say "drill $name: $count digits at $rate msg/s through the hosts"
  watch_health "$fog" "$WORK/health-$name.log" &
  wpid=$!
  bench_start "$name" "$count" "$rate"
  sleep 8
  case "$name" in
    kill9)
      local pid restarts
      pid=$(docker inspect -f '{{.State.Pid}}' "$fog")
      restarts=$(docker inspect -f '{{.RestartCount}}' "$fog")
      say "  kill -9 $pid (the fog tier's process, from docker inspect)"
      kill -9 "$pid"
      local deadline=$(($(date +%s) + 60))
      until [ "$(docker inspect -f '{{.RestartCount}}' "$fog")" -gt "$restarts" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || die "the restart policy did not bring the fog tier back"
        sleep 0.5
      done
      wait_healthy "$fog" "fog tier after kill -9" 90
      extra="restarted by the restart policy (RestartCount $restarts -> $(docker inspect -f '{{.RestartCount}}' "$fog"))"
      ;;
    broker)
      local b; b=$(cid fog broker)
      say "  docker kill of the fog broker, 5 s down, docker start on its volume"
      docker kill "$b" >/dev/null
      sleep 5
      docker start "$b" >/dev/null
      wait_healthy "$b" "fog broker after restart" 60
      extra="broker back on volume $(docker inspect -f '{{range .Mounts}}{{.Name}}{{end}}' "$b")"
      ;;
    cut)
      local b c t; b=$(cid fog broker); t=$(date +%s.%N)
      say "  fog host off its network for 30 s (docker network disconnect)"
      for c in "$fog" "$b"; do docker network disconnect "$(net fog)" "$c"; done
      sleep 30
      docker network connect --alias broker --alias fog-broker --alias fog-broker-lan "$(net fog)" "$b"
      docker network connect --alias fog "$(net fog)" "$fog"
      say "  reconnected after $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
      wait_healthy "$fog" "fog tier after the cut" 120
      sleep 1 # the watcher's next sample records it
      grep -q ' unhealthy$' "$WORK/health-$name.log" || die "the fog tier's health check never turned unhealthy during the cut"
      ;;
    stop)
      local t code since
      t=$(date +%s.%N); since=$(date -u +%Y-%m-%dT%H:%M:%S)
      host fog stop fog 2>&1 | sed 's/^/    /'
      code=$(docker inspect -f '{{.State.ExitCode}}' "$fog")
      # Drain time from the node's own log (SIGTERM received -> offsets committed) and from the
      # container's exit time; compose's wall time adds its own start-up on a busy machine.
      extra=$(docker logs --since "$since" "$fog" 2>&1 | python3 -c '
import json, sys
from datetime import datetime
ts = {}
for line in sys.stdin:
    try: rec = json.loads(line)
    except ValueError: continue
    msg = rec.get("fields", {}).get("message", "")
    for k in ("SIGTERM", "final offsets committed"):
        if msg.startswith(k): ts.setdefault(k, rec["timestamp"])
t = lambda s: datetime.fromisoformat(s[:26].rstrip("Z"))
if len(ts) < 2:
    sys.exit(print("no drain lines in the log"))
term, done, fin = t(ts["SIGTERM"]), t(ts["final offsets committed"]), t(sys.argv[1])
drain_ms = (done - term).total_seconds() * 1000
exited_s = (fin - term).total_seconds()
print(f"SIGTERM -> offsets committed {drain_ms:.0f} ms -> container exited {exited_s:.2f} s")
' "$(docker inspect -f '{{.State.FinishedAt}}' "$fog")")
      extra="compose stop: $extra, exit code $code (compose's wall time $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s)"
      say "  $extra; starting it again"
      [ "$code" = 0 ] || die "the fog tier did not drain within the 10 s grace (exit code $code)"
      host fog start fog 2>&1 | sed 's/^/    /'
      wait_healthy "$fog" "fog tier after compose start" 90
      ;;
    *) die "unknown drill $name" ;;
  esac
  bench_wait "$name"
  kill "$wpid" 2>/dev/null || true
  wait "$wpid" 2>/dev/null || true
  [ "$name" != cut ] || extra="fog health check $(transitions "$WORK/health-$name.log")"
  sent=$(field "$name" sent); answered=$(field "$name" answered)
  lost=$(field "$name" lost); dups=$(field "$name" duplicates)
  grep 'healthz:' "$WORK/health-$name.log" | head -n 1 || true
  echo "drill $name: $(sed -n 's/^summary: //p' "$WORK/bench-$name.out"); $extra"
  [ "$answered" = "$sent" ] && [ "$lost" = 0 ] || die "drill $name lost $lost keys"
  [ "$name" != stop ] || [ "$dups" = 0 ] || die "drill stop: $dups duplicates after a graceful stop"
}

# Each fog container's last partition assignment, from its JSON log (the node logs every change
# once: `generation N: assigned partitions [..] of TOPIC (gained [..], lost [..])`). Exit 0 when
# the fog input's partitions are spread over all of them: one generation, no container without a
# share, no partition twice, none missing. Prints one line per container, or why not.
spread() { # container..
  local c name names=()
  for c in "$@"; do
    name=$(docker inspect -f '{{.Name}}' "$c") && name=${name#/} || return 1
    docker logs "$c" >"$WORK/scale-$name.log" 2>&1 || return 1
    names+=("$name")
  done
  python3 - "$WORK" "topology/${TOPOLOGY_FILE:-continuum.toml}" "${names[@]}" <<'PY'
import json, re, sys, tomllib
work, topology, names = sys.argv[1], sys.argv[2], sys.argv[3:]
fog = next(t for t in tomllib.load(open(topology, "rb"))["tiers"] if t["name"] == "fog")
topic, count = fog["input"]["topic"], fog["input"].get("partitions", 1)
pat = re.compile(r"^generation (\d+): assigned partitions \[([0-9, ]*)\] of (\S+) ")
last = {}
for name in names:
    for line in open(f"{work}/scale-{name}.log", errors="replace"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        m = pat.match(rec.get("fields", {}).get("message", ""))
        if m and m.group(3) == topic:
            parts = sorted(int(p) for p in m.group(2).split(",") if p.strip())
            last[name] = (int(m.group(1)), parts, rec.get("timestamp", "?"))
for name in names:
    if name in last:
        g, parts, ts = last[name]
        print(f"    {name}: generation {g}, partitions {parts} of {topic} (logged {ts})")
    else:
        print(f"    {name}: no assignment logged yet")
gens = {last[n][0] for n in last}
owned = [p for n in last for p in last[n][1]]
why = None
if len(last) < len(names):
    why = f"{len(names) - len(last)} container(s) logged no assignment of {topic}"
elif len(gens) != 1:
    why = f"the containers' last assignments are of different generations {sorted(gens)}"
elif any(not last[n][1] for n in names):
    why = "a container has no partition"
    if count < len(names):
        why += f" ({topic} has {count} partitions for {len(names)} containers)"
elif len(owned) != len(set(owned)):
    why = f"a partition is assigned twice: {sorted(owned)}"
elif set(owned) != set(range(count)):
    why = f"partitions {sorted(set(range(count)) - set(owned))} of {topic} (partitions = {count}) are not assigned"
if why:
    sys.exit(f"    not spread: {why}")
print(f"    spread: generation {gens.pop()}, {count} partitions of {topic} over {len(names)} containers, disjoint, all covered")
PY
}

# Messages the fog tier consumed, per container, from each one's own /metrics (its published
# port: the compose file lets Docker pick one per container of a scaled service).
fog_in() { # container
  local url; url="http://$(docker port "$1" 9464 | head -n1)/metrics"
  curl -fsS -m 2 "$url" | awk '/^ddnn_messages_in_total\{/ && /tier="fog"/ { n += $NF } END { print n + 0 }'
}

# The fog tier scaled out to SCALE_FOG containers on the fog host: one consumer group, which must
# spread the fog input's partitions over all of them (from their logs, within 120 s), keep that
# assignment through the paper's workload (no rebalance during it), have each container consume
# part of it, and answer every digit. Docker's DNS must list every container under the service
# name (how Prometheus finds them, docs/scaling.md).
scale_out() {
  local n=${SCALE_FOG:-3} t c cs=() before=() deadline settled ips
  t=$(date +%s.%N)
  say "scale: the fog host to $n fog containers (compose up --scale fog=$n)"
  host fog --profile broker --profile fog up -d --no-build --scale "fog=$n" 2>&1 | sed 's/^/    /'
  mapfile -t cs < <(host fog ps -q fog)
  [ "${#cs[@]}" = "$n" ] || die "scale: $n fog containers asked for, ${#cs[@]} found"
  for c in "${cs[@]}"; do wait_healthy "$c" "fog container $(docker inspect -f '{{.Name}}' "$c")" 90; done
  deadline=$(($(date +%s) + 120))
  until spread "${cs[@]}" >"$WORK/scale-spread.txt" 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$WORK/scale-spread.txt"; die "scale: the fog input's partitions were not spread over $n containers within 120 s"; }
    sleep 0.5
  done
  settled=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  cat "$WORK/scale-spread.txt"
  say "  spread $settled s after the scale command (containers started, healthy, group rebalanced)"
  ips=$(docker exec "${cs[0]}" getent ahostsv4 fog 2>/dev/null | awk '{ print $1 }' | sort -u | wc -l) || ips=0
  say "  Docker's DNS on the fog network: \`fog\` resolves to $ips address(es)"
  [ "$ips" = "$n" ] || die "scale: the service name fog resolves to $ips addresses, not $n (Prometheus' dns_sd_configs would miss instances)"
  for c in "${cs[@]}"; do before+=("$(fog_in "$c")"); done
  check scale
  spread "${cs[@]}" >"$WORK/scale-spread-after.txt" 2>&1 || { cat "$WORK/scale-spread-after.txt"; die "scale: the assignment fell apart during the workload"; }
  [ "$(tail -n1 "$WORK/scale-spread.txt")" = "$(tail -n1 "$WORK/scale-spread-after.txt")" ] \
    || { cat "$WORK/scale-spread-after.txt"; die "scale: the group rebalanced during the workload"; }
  local i line="" got
  for i in "${!cs[@]}"; do
    got=$(( $(fog_in "${cs[$i]}") - ${before[$i]} ))
    line+="${line:+, }$(docker inspect -f '{{.Name}}' "${cs[$i]}" | tr -d /) $got"
    [ "$got" -gt 0 ] || die "scale: fog container ${cs[$i]} consumed nothing of the workload"
  done
  echo "scale: fog x$n, spread in $settled s, $(sed -n 's/^    spread: //p' "$WORK/scale-spread.txt"), no rebalance during the workload; consumed per container: $line; $(sed -n 's/^summary: //p' "$WORK/bench-scale.out" | cut -d, -f1-4)"
}

# The highest rate the edge sustains, free of the client's and brokers' limits: with the edge
# tier frozen (docker pause) the client fills its input with N digits at 1,000/s (faster, its
# thousands of one-record produce requests at once swamp the sqlite broker); then
# the tier is thawed and drains that backlog under its 1 CPU. Drain rate = N / time from thaw
# to lag 0 (from its /metrics, every 0.25 s); CPU per message from its utime + stime.
edge_drain() { # models N container pid metrics-url
  local models=$1 n=$2 c=$3 pid=$4 url=$5 name="eb-$1-drain-$2" tck t0 t1 thaw done_at in0 now
  tck=$(getconf CLK_TCK)
  in0=$(curl -fsS -m 2 "$url" | awk '/^ddnn_messages_in_total\{/ && /tier="edge"/ { n += $NF } END { print n + 0 }')
  docker pause "$c" >/dev/null
  bench_start "$name" "$n" 1000
  # The client says when every digit is in the edge broker (`sent N digits in ...`).
  local deadline=$(($(date +%s) + 600)) filled=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    filled=$(docker logs "$P-bench-$name" 2>&1 | sed -n 's/^sent \([0-9]*\) digits in .*/\1/p' | tail -n1)
    [ "${filled:-0}" -ge "$n" ] && break
    sleep 0.5
  done
  [ "${filled:-0}" -ge "$n" ] || { docker unpause "$c" >/dev/null; die "drain: the client did not send $n digits in 600 s"; }
  t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  docker unpause "$c" >/dev/null
  thaw=$(date +%s.%N)
  while :; do
    now=$(curl -fsS -m 1 "$url" 2>/dev/null | awk '/^ddnn_messages_in_total\{/ && /tier="edge"/ { n += $NF } END { print n + 0 }') || now=0
    if [ "$((now - in0))" -ge "$n" ]; then done_at=$(date +%s.%N); break; fi
    awk -v a="$thaw" -v b="$(date +%s.%N)" 'BEGIN { exit !(b - a > 600) }' && die "drain: the edge consumed $((now - in0)) of $n in 600 s"
    sleep 0.25
  done
  t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  bench_wait "$name"
  awk -v m="$models" -v n="$n" -v el="$(awk -v a="$thaw" -v b="$done_at" 'BEGIN { print b - a }')" -v cpu="$((t1 - t0))" -v tck="$tck" \
    -v hwm="$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")" -v ans="$(field "$name" answered)" -v load="$(cut -d' ' -f1 /proc/loadavg)" \
    'BEGIN { printf "edge-bench %s: drained a backlog of %d digits in %.2f s = %.0f msg/s under its 1 CPU, CPU %.3f ms/msg (%.0f%% of its CPU), peak RSS %.1f MiB; client answered %d; load average %s\n",
        m, n, el, n / el, 1000 * cpu / tck / n, 100 * cpu / tck / el, hwm / 1024, ans, load }' | tee -a "$WORK/edge-bench.txt"
}

# The edge host's budget, measured: for one model set, digits at each rate (20 s of load, at least
# the 2,000 held-out digits) through the three hosts. Per rate: the edge tier's CPU per message
# (utime + stime of its process over the run / digits), its peak RSS (VmHWM), and from its
# /metrics, sampled every second, the rate it consumed at and the most input it had waiting
# (ddnn_lag summed over partitions): the edge kept up when that lag stayed under one second of
# input. The client's round trips say whether the rest (client, brokers, other tiers on the same
# two cores) kept up too.
edge_bench() {
  local models=$1 file=continuum.toml; shift
  if [ "$models" != mnist ]; then
    file=continuum-$models.generated.toml
    sed "s#models/mnist/#models/$models/#" topology/continuum.toml >"topology/$file"
  fi
  TOPOLOGY_FILE=$file up
  local c pid tck rate count t0 t1 out url name
  c=$(cid edge edge); pid=$(docker inspect -f '{{.State.Pid}}' "$c"); tck=$(getconf CLK_TCK)
  url="http://$(docker port "$c" 9464 | head -n1)/metrics"
  for rate in "$@"; do
    case $rate in drain:*) edge_drain "$models" "${rate#drain:}" "$c" "$pid" "$url"; continue ;; esac
    count=$((rate * 20)); [ "$count" -ge 2000 ] || count=2000
    name="eb-$models-$rate"
    t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    bench_start "$name" "$count" "$rate"
    # Sample the edge's metrics while the client runs.
    : >"$WORK/$name.metrics"
    while [ "$(docker inspect -f '{{.State.Running}}' "$P-bench-$name" 2>/dev/null)" = true ]; do
      curl -fsS -m 1 "$url" 2>/dev/null | awk -v t="$(date +%s.%N)" '
        /^ddnn_lag\{/ && /tier="edge"/ { lag += $NF }
        /^ddnn_messages_in_total\{/ && /tier="edge"/ { n = $NF }
        END { print t, n + 0, lag + 0 }' >>"$WORK/$name.metrics" || true
      sleep 1
    done
    bench_wait "$name"
    t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    out=$WORK/bench-$name.out
    # Consumption rate: first to last sample where the counter moved; peak lag over all samples.
    read -r in_rate max_lag < <(awk 'NR == 1 { t0 = $1; n0 = $2 } $2 > last { t1 = $1; n1 = $2; last = $2 }
      $3 > ml { ml = $3 } END { printf "%.0f %d\n", (t1 > t0 ? (n1 - n0) / (t1 - t0) : 0), ml }' "$WORK/$name.metrics")
    awk -v m="$models" -v r="$rate" -v n="$count" -v cpu="$((t1 - t0))" -v tck="$tck" \
      -v hwm="$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")" -v inr="$in_rate" -v lag="$max_lag" \
      -v el="$(sed -n 's/^elapsed: *\([0-9.]*\) s/\1/p' "$out")" \
      -v ans="$(field "$name" answered)" \
      -v rtt="$(sed -n 's/^summary: .*p50\/p95\/p99 \([0-9./]*\) ms.*/\1/p' "$out")" \
      'BEGIN { printf "edge-bench %s: offered %d msg/s (%d digits): edge consumed %d msg/s, max lag %d (%s), CPU %.3f ms/msg (%.0f%% of its 1 CPU), peak RSS %.1f MiB; client: answered %d, last answer %.1f s after the last send, RTT p50/p95/p99 %s ms\n",
          m, r, n, inr, lag, (lag <= r ? "kept up" : "FELL BEHIND"), 1000 * cpu / tck / n, 100 * cpu / tck / (n / r),
          hwm / 1024, ans, el - n / r, rtt }' | tee -a "$WORK/edge-bench.txt"
  done
  down
  rm -f "topology/continuum-$models.generated.toml"
}

cmd=${1:-check}
shift || true
# A signal (timeout, Ctrl-C) ends the script through its EXIT trap, which tears the hosts down.
trap 'exit 143' TERM
trap 'exit 130' INT
case "$cmd" in
  up) images; up ;;
  down) down ;;
  check|drills)
    images
    trap down EXIT
    down >/dev/null 2>&1 || true
    up
    check
    if [ "$cmd" = drills ]; then
      # `scale` is its own command (and CI step), on fresh hosts: after the drills the fog
      # group may hold a member that never left (tansu 0.6.0 expires no session), which is the
      # drills' finding, not the scale-out's. Named here, it runs where it is named.
      [ $# -gt 0 ] || set -- kill9 broker stop cut
      for d in "$@"; do
        if [ "$d" = scale ]; then scale_out; else drill "$d"; fi
      done
    fi
    if [ "${KEEP_UP:-0}" = 1 ]; then trap - EXIT; say "hosts left running (scripts/continuum.sh down)"; fi
    ;;
  scale)
    images
    trap down EXIT
    down >/dev/null 2>&1 || true
    up
    scale_out
    if [ "${KEEP_UP:-0}" = 1 ]; then trap - EXIT; say "hosts left running (scripts/continuum.sh down)"; fi
    ;;
  edge-bench)
    images
    trap down EXIT
    down >/dev/null 2>&1 || true
    : >"$WORK/edge-bench.txt"
    models=${1:-mnist}; shift || true
    [ $# -gt 0 ] || set -- 200 500 1000 1500
    edge_bench "$models" "$@"
    ;;
  *) echo "usage: $0 check | drills [kill9 broker stop cut scale] | scale | edge-bench [mnist|mnist-cnn|mnist-resnet] [RATE..|drain:N..] | up | down" >&2; exit 2 ;;
esac
