#!/usr/bin/env bash
# Deployment checks, as far as a machine without a Docker engine allows:
#   1. docker-compose.yml parses with a real compose implementation, for every profile;
#   1b. the Kubernetes manifests of docs/kubernetes/ parse and agree with topology/continuum.toml
#      (scripts/check-kubernetes.py: tier, ConfigMap, probes, grace, group, topic, partitions);
#   2. every ddnn command in it is accepted by the ddnn CLI, and its topology passes `ddnn check`;
#   3. the ansible playbook passes --syntax-check and ansible-lint;
#   4. the playbook really runs against localhost into a temporary prefix (pid-file launcher
#      instead of systemd), the deployed continuum answers digits, and a second run changes nothing;
#   5. a threshold changed in the inventory is rolled out without restarting the node, which
#      applies it in place (live topology reload); 6. a new binary restarts the tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
[ -f .ddnn/env ] && . .ddnn/env
: "${DDNN_BIN:?run scripts/setup.sh first}"
say() { printf '[deploy] %s\n' "$*"; }

if ! command -v docker-compose >/dev/null; then
  say "installing docker-compose (Debian) for its parser"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq docker-compose >/dev/null; else sudo apt-get install -y -qq docker-compose >/dev/null; fi
fi
VENV=.ddnn/ansible-venv
if [ ! -x "$VENV/bin/ansible-lint" ]; then
  say "installing ansible-core and ansible-lint into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "ansible-core>=2.19,<2.20" "ansible-lint>=25"
fi
export PATH="$ROOT/$VENV/bin:$PATH"

say "1. compose file, every profile"
for p in broker edge fog cloud bench; do
  docker-compose --profile "$p" config -q
done

say "1b. Kubernetes manifests against the topology"
"$VENV/bin/python" scripts/check-kubernetes.py docs/kubernetes topology/continuum.toml

say "2. compose commands against the CLI"
docker-compose --profile edge --profile fog --profile cloud --profile bench config >.ddnn/compose.rendered.yml
"$VENV/bin/python" - "$DDNN_BIN" <<'PY'
import subprocess, sys, yaml
ddnn = sys.argv[1]
spec = yaml.safe_load(open(".ddnn/compose.rendered.yml"))
checked = 0
for name, svc in spec["services"].items():
    cmd = svc.get("command")
    if not cmd or not str(svc.get("image", "")).startswith("ddnn"):
        continue
    sub, args = cmd[0], cmd[1:]
    help_text = subprocess.run([ddnn, sub, "--help"], capture_output=True, text=True, check=True).stdout
    for a in args:
        if a.startswith("--") and a not in help_text:
            sys.exit(f"service {name}: `ddnn {sub}` has no flag {a}")
    topo = args[args.index("--topology") + 1].replace("/opt/ddnn/", "")
    subprocess.run([ddnn, "check", "--topology", topo], check=True, capture_output=True)
    if "--tier" in args:
        tier = args[args.index("--tier") + 1]
        out = subprocess.run([ddnn, "check", "--topology", topo], capture_output=True, text=True).stdout
        if f"tier {tier}:" not in out:
            sys.exit(f"service {name}: tier {tier} is not in {topo}")
    checked += 1
    print(f"  {name}: ddnn {' '.join(cmd)} ok")
if checked < 4:
    sys.exit(f"only {checked} ddnn services found")
PY

say "3. ansible syntax and lint"
(cd ansible && ansible-playbook -i inventory/example.yml --syntax-check site.yml >/dev/null)
(cd ansible && ansible-lint -q site.yml ci/render.yml)

say "3b. topology rendered for every host of the example inventory"
RENDER=$(mktemp -d /tmp/ddnn-render.XXXXXX)
mkdir -p "$RENDER/etc" && ln -s "$ROOT/models" "$RENDER/models"
(cd ansible && ansible-playbook -i inventory/example.yml ci/render.yml -e "ddnn_render_dir=$RENDER/etc" >/dev/null)
for f in "$RENDER"/etc/*.toml; do
  "$DDNN_BIN" check --topology "$f" >/dev/null || { "$DDNN_BIN" check --topology "$f"; exit 1; }
done
"$VENV/bin/python" - "$RENDER/etc" <<'PY'
import sys, tomllib, yaml
from pathlib import Path
inv = yaml.safe_load(open("ansible/inventory/example.yml"))["all"]["children"]
for tier in ("edge", "fog", "cloud"):
    hosts = list(inv[tier]["hosts"])
    first = None
    for h in hosts:
        topo = tomllib.load(open(Path(sys.argv[1]) / f"{h}-{tier}.toml", "rb"))
        t = next(t for t in topo["tiers"] if t["name"] == tier)
        # Every host of a tier joins the same consumer group with the same definition.
        if first is None:
            first = t
        elif t != first:
            sys.exit(f"{h}: tier {tier} differs from {hosts[0]}'s: {t} vs {first}")
        group = t.get("group", f"ddnn.{tier}")
        print(f"  {h}: tier {tier}, group {group} ({len(hosts)} host(s)), ddnn check ok")
PY
rm -rf "$RENDER"

say "4. playbook against localhost"
PREFIX=$(mktemp -d /tmp/ddnn-deploy.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BPORT=$(free_port); P1=$(free_port); P2=$(free_port); P3=$(free_port)
cleanup() {
  for t in edge fog cloud; do [ -x "$PREFIX/bin/ddnnctl-$t" ] && "$PREFIX/bin/ddnnctl-$t" stop || true; done
  [ -x "$PREFIX/bin/brokerctl" ] && "$PREFIX/bin/brokerctl" stop || true
  rm -rf "$PREFIX" "$PREFIX.vars.yml" "$PREFIX.ddnn-new"
}
trap cleanup EXIT
cat >"$PREFIX.vars.yml" <<VARS
ddnn_service_manager: launcher
ddnn_become: false
ddnn_broker_listen: 127.0.0.1
ddnn_metrics_host: 127.0.0.1
ddnn_prefix: $PREFIX
ddnn_binary_src: $DDNN_BIN
ddnn_ort_src: $ORT_DYLIB_PATH
ddnn_models_src: $ROOT/models/
ddnn_broker_bin_src: ${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}
ddnn_broker_port: $BPORT
ddnn_brokers: {edge: ["127.0.0.1:$BPORT"], fog: ["127.0.0.1:$BPORT"], cloud: ["127.0.0.1:$BPORT"]}
ddnn_metrics_ports: {edge: $P1, fog: $P2, cloud: $P3}
ddnn_partitions: {edge: 2, fog: 1, cloud: 1}
VARS
run_playbook() { (cd ansible && ansible-playbook -i ci/inventory.yml site.yml -e "@$PREFIX.vars.yml"); }
run_playbook | tee .ddnn/ansible-run1.log | tail -n 4
wait_ready() {
  for port in $P1 $P2 $P3; do
    # One 200 within 30 s counts (a second probe right after could only add a race).
    ready=0
    for _ in $(seq 1 300); do curl -sf --max-time 5 "http://127.0.0.1:$port/readyz" >/dev/null && { ready=1; break; }; sleep 0.1; done
    [ "$ready" = 1 ] || { say "tier on :$port not ready"; curl -s --max-time 5 -w ' (HTTP %{http_code})\n' "http://127.0.0.1:$port/readyz" || true; tail -n 30 "$PREFIX"/run/*.log "$PREFIX"/broker/broker.log; exit 1; }
  done
}
wait_ready
say "deployed continuum answers digits"
ORT_DYLIB_PATH="$PREFIX/lib/libonnxruntime.so.1.31.1" "$PREFIX/bin/ddnn" demo \
  --topology "$PREFIX/etc/topology-edge.toml" --digits models/heldout.bin --count 50 --rate 100 --timeout-s 60
say "second run must change nothing"
run_playbook | tee .ddnn/ansible-run2.log | tail -n 4
grep -Eq 'localhost +: ok=[0-9]+ +changed=0 ' .ddnn/ansible-run2.log || { say "second run changed something"; exit 1; }
say "5. a threshold changed in the inventory applies live: topology rewritten, no restart"
pid_before=$(cat "$PREFIX/run/ddnn-edge.pid")
(cd ansible && ansible-playbook -i ci/inventory.yml site.yml -e "@$PREFIX.vars.yml" \
  -e '{"ddnn_thresholds": {"edge": 0.95, "fog": 0.8, "cloud": 0.8}}') | tee .ddnn/ansible-run3.log | tail -n 3
grep -q 'RUNNING HANDLER' .ddnn/ansible-run3.log && { say "a threshold edit restarted something"; exit 1; }
[ "$(cat "$PREFIX/run/ddnn-edge.pid")" = "$pid_before" ] && kill -0 "$pid_before" || { say "edge node restarted or died"; exit 1; }
for _ in $(seq 1 100); do grep -q 'applied in place' "$PREFIX/run/ddnn-edge.log" && break; sleep 0.1; done
grep 'applied in place' "$PREFIX/run/ddnn-edge.log" | grep -q 'threshold' || { say "edge node did not apply the new threshold"; tail -n 20 "$PREFIX/run/ddnn-edge.log"; exit 1; }
grep 'applied in place' "$PREFIX/run/ddnn-edge.log" | tail -n 1 | sed 's/^/  /'
say "6. a new binary restarts the tiers (handler), which come back ready"
objcopy --strip-debug "$DDNN_BIN" "$PREFIX.ddnn-new"
(cd ansible && ansible-playbook -i ci/inventory.yml site.yml -e "@$PREFIX.vars.yml" \
  -e "ddnn_binary_src=$PREFIX.ddnn-new") | tee .ddnn/ansible-run4.log | tail -n 3
grep -q 'RUNNING HANDLER \[node : Restart changed tiers (launcher)\]' .ddnn/ansible-run4.log || { say "new binary did not restart the tiers"; exit 1; }
[ "$(cat "$PREFIX/run/ddnn-edge.pid")" != "$pid_before" ] || { say "edge node kept its old process"; exit 1; }
wait_ready
rm -f "$PREFIX.ddnn-new"
rm -f "$PREFIX.vars.yml"
say "all deployment checks passed"
