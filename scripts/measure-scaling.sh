#!/usr/bin/env bash
# Measures the elastic tier (issue: elastic tiers) on a real broker with the mnist-cnn models:
#   burst  -> reaction time from the burst's first record to the first scale-up, peak workers,
#             time to drain, settled workers after the stabilization window;
#   steady -> scale events during a constant load once settled;
#   idle cloud tier with min = 0 -> cold start when the first message reaches it.
# Prints a summary and writes the raw /metrics samples to .ddnn/scaling/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .ddnn/env ] || bash scripts/setup.sh
. .ddnn/env
OUT=.ddnn/scaling; rm -rf "$OUT"; mkdir -p "$OUT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash scripts/broker.sh start --port "$PORT" --data "$OUT/broker" >/dev/null
NODE=
trap '[ -n "$NODE" ] && kill $NODE 2>/dev/null; wait 2>/dev/null; bash scripts/broker.sh stop --data "$OUT/broker" >/dev/null' EXIT
sed -e "s#127.0.0.1:9092#127.0.0.1:$PORT#; s#127.0.0.1:9464#127.0.0.1:$MPORT#; s#models/mnist/#models/mnist-cnn/#" \
    -e 's#workers = { min = 1, max = 2 }#workers = { min = 1, max = 2 }\nscaler = { tick = "250ms", target_drain = "1s", stabilization = "5s" }#' \
    topology/local.toml >"$OUT/topology.toml"
# The cloud tier sleeps with no worker until a message reaches it.
python3 - "$OUT/topology.toml" <<'PY'
import sys; p = sys.argv[1]; s = open(p).read()
i = s.index('name = "cloud"'); j = s.index("workers = { min = 1, max = 2 }", i)
open(p, "w").write(s[:j] + "workers = { min = 0, max = 2 }" + s[j + len("workers = { min = 1, max = 2 }"):])
PY
sed -i "s#\.\./models#$(pwd)/models#" "$OUT/topology.toml"
"$DDNN_BIN" node --topology "$OUT/topology.toml" --fetch-mode adaptive >"$OUT/node.log" 2>&1 & NODE=$!
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$MPORT/readyz" >/dev/null && break; sleep 0.1; done
"$DDNN_PYTHON" - "$PORT" "$MPORT" "$OUT" <<'PY'
import json, re, sys, threading, time, urllib.request, uuid
from confluent_kafka import Producer
port, mport, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = open("models/heldout.bin", "rb").read()
def payload(i):
    rec = data[(i % 2000) * 785:(i % 2000 + 1) * 785]
    return json.dumps([[list(rec[1 + r * 28:1 + (r + 1) * 28]) for r in range(28)]]).encode()
samples, stop = [], threading.Event()
def scrape():
    while not stop.is_set():
        t = time.time()
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
        m = {}
        for line in body.splitlines():
            g = re.match(r'^(ddnn_(?:workers|workers_desired|messages_in_total|messages_exited_total|cold_start_seconds|cold_starts_total|scale_events_total))\{([^}]*)\} (\S+)$', line)
            if g:
                m[g.group(1) + "{" + g.group(2) + "}"] = float(g.group(3))
        samples.append((t, m))
        time.sleep(0.1)
th = threading.Thread(target=scrape, daemon=True); th.start()
p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 2})
def send(n, rate=None):
    for i in range(n):
        p.produce("ddnn.edge.input", key=str(uuid.uuid4()).encode(), value=payload(i),
                  headers=[("X-INFERENCE-TS", repr(time.time()).encode())])
        p.poll(0)
        if rate: time.sleep(1 / rate)
    p.flush(30)
def get(m, k): return m.get(k, 0.0)
time.sleep(2)
cold_before = get(samples[-1][1], 'ddnn_workers{tier="cloud"}')
# 1. burst
t_burst = time.time(); send(4000)
def wait(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if samples and cond(samples[-1][1]): return True
        time.sleep(0.05)
    return False
wait(lambda m: get(m, 'ddnn_messages_exited_total{tier="edge"}') + get(m, 'ddnn_messages_exited_total{tier="fog"}') + get(m, 'ddnn_messages_exited_total{tier="cloud"}') >= 4000, 120)
t_drained = time.time()
up = [t for t, m in samples if t >= t_burst and get(m, 'ddnn_workers_desired{tier="edge"}') > 1]
peak = max(get(m, 'ddnn_workers{tier="edge"}') for t, m in samples if t >= t_burst)
wait(lambda m: get(m, 'ddnn_workers{tier="edge"}') == 1, 60)
t_settled = time.time()
# 2. steady load: 100 msg/s for 30 s (below one worker's capacity)
def events(m): return sum(v for k, v in m.items() if k.startswith("ddnn_scale_events_total") and 'tier="edge"' in k)
time.sleep(1)
e0 = events(samples[-1][1]); t0 = time.time(); send(3000, rate=100); e1 = events(samples[-1][1])
stop.set(); th.join()
last = samples[-1][1]
res = {
  "burst_messages": 4000,
  "reaction_s_burst_to_first_scale_up": round(up[0] - t_burst, 3) if up else None,
  "edge_peak_workers": peak,
  "burst_drained_after_s": round(t_drained - t_burst, 2),
  "edge_back_to_min_after_drain_s": round(t_settled - t_drained, 2),
  "edge_settled_workers": get(last, 'ddnn_workers{tier="edge"}'),
  "steady_load_msgs_per_s": 100, "steady_load_seconds": round(time.time() - t0, 1),
  "scale_events_during_steady_load": e1 - e0,
  "cloud_workers_before_any_message": cold_before,
  "cloud_cold_start_s": get(last, 'ddnn_cold_start_seconds{tier="cloud"}'),
}
json.dump(res, open(f"{out}/summary.json", "w"), indent=2)
json.dump(samples, open(f"{out}/samples.json", "w"))
print(json.dumps(res, indent=2))
PY
grep -a '"scaling"\|scaling' "$OUT/node.log" | sed 's/\x1b\[[0-9;]*m//g' | head -20 | cut -c1-260
