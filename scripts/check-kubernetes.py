"""The Kubernetes manifests of docs/kubernetes/ against the topology they run.

No cluster here, so this checks structure: every YAML document parses; there is one Deployment
and one KEDA ScaledObject; the Deployment runs `ddnn node` on a tier of the topology it mounts
from a ConfigMap, probes /readyz and /healthz on the metrics port, gives the drain and LeaveGroup
time to finish, and names the brokers of every cluster the tier talks to; the ScaledObject scales
that Deployment on that tier's consumer group and input topic, up to the topic's partition count.
A PodMonitor, if there is one, selects the Deployment's pods and port.

    .ddnn/ansible-venv/bin/python scripts/check-kubernetes.py [DIR] [TOPOLOGY]

Run by scripts/check-deploy.sh with the venv's PyYAML; prints one line per manifest, exits 1 with
one line per problem.
"""

import sys
import tomllib
from pathlib import Path

import yaml

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/kubernetes")
TOPOLOGY = Path(sys.argv[2] if len(sys.argv) > 2 else "topology/continuum.toml")
METRICS_PORT = 9464
# SIGTERM -> drain (within 7 s) -> commit -> LeaveGroup, with room for a slow broker.
MIN_GRACE_S = 15

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def dig(doc, *path):
    for key in path:
        if isinstance(key, int):
            doc = doc[key] if isinstance(doc, list) and len(doc) > key else None
        else:
            doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


docs = []
files = sorted(DIR.glob("*.yaml")) + sorted(DIR.glob("*.yml"))
if not files:
    sys.exit(f"{DIR}: no YAML files")
for f in files:
    try:
        loaded = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problem(f, f"not valid YAML: {e}")
        continue
    for i, d in enumerate(loaded):
        where = f"{f}" if len(loaded) == 1 else f"{f} (document {i + 1})"
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            problem(where, "not a Kubernetes object (no kind or apiVersion)")
            continue
        docs.append((where, d))

by_kind = {}
for where, d in docs:
    by_kind.setdefault(d["kind"], []).append((where, d))
known = {"Deployment", "ScaledObject", "PodMonitor"}
for kind, found in by_kind.items():
    if kind not in known:
        problem(found[0][0], f"kind {kind} is not checked here (known: {', '.join(sorted(known))}): add a check")
for kind in ("Deployment", "ScaledObject"):
    if len(by_kind.get(kind, [])) != 1:
        problem(DIR, f"want exactly one {kind}, found {len(by_kind.get(kind, []))}")
if problems:
    sys.exit("\n".join(problems))

topo = tomllib.loads(TOPOLOGY.read_text())
tiers = {t["name"]: t for t in topo["tiers"]}

# --- Deployment -------------------------------------------------------------------------------
where, dep = by_kind["Deployment"][0]
name = dig(dep, "metadata", "name")
pod = dig(dep, "spec", "template", "spec") or {}
labels = dig(dep, "spec", "template", "metadata", "labels") or {}
selector = dig(dep, "spec", "selector", "matchLabels") or {}
if not selector or any(labels.get(k) != v for k, v in selector.items()):
    problem(where, f"spec.selector.matchLabels {selector} must be non-empty and match the pod labels {labels}")
containers = pod.get("containers") or []
if len(containers) != 1:
    problem(where, f"want one container, found {len(containers)}")
    sys.exit("\n".join(problems))
c = containers[0]
args = (c.get("command") or []) + (c.get("args") or [])
if args[:1] == ["ddnn"]:
    args = args[1:]


def flag(name):
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


tier_name, topo_path = flag("--tier"), flag("--topology")
if args[:1] != ["node"] or tier_name is None or topo_path is None:
    problem(where, f"the container must run `ddnn node --topology FILE --tier NAME`, runs {args}")
    sys.exit("\n".join(problems))
tier = tiers.get(tier_name)
if tier is None:
    problem(where, f"--tier {tier_name}: not a tier of {TOPOLOGY} (tiers: {', '.join(tiers)})")
    sys.exit("\n".join(problems))
if Path(topo_path).name != TOPOLOGY.name:
    problem(where, f"--topology {topo_path}: checked against {TOPOLOGY}, a different file")

# The topology file must come from a ConfigMap volume mounted at its directory (not a subPath:
# those never see ConfigMap updates, and the node reloads edits by itself).
volumes = {v.get("name"): v for v in pod.get("volumes") or []}
mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == str(Path(topo_path).parent)), None)
if mount is None:
    problem(where, f"no volume mounted at {Path(topo_path).parent}, where --topology {topo_path} lives")
elif "subPath" in mount:
    problem(where, f"the topology volume is mounted with subPath: it would never see ConfigMap updates")
elif "configMap" not in volumes.get(mount.get("name"), {}):
    problem(where, f"volume {mount.get('name')} (at {mount.get('mountPath')}) is not a ConfigMap")

listen = dig(topo, "metrics", "listen") or ""
if not listen.endswith(f":{METRICS_PORT}") or listen.startswith("127."):
    problem(TOPOLOGY, f"[metrics] listen = {listen!r}: a pod needs 0.0.0.0:{METRICS_PORT}")
ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
if METRICS_PORT not in ports.values():
    problem(where, f"no containerPort {METRICS_PORT} (ports: {ports})")


def probe_port(probe):
    port = dig(probe, "httpGet", "port")
    return ports.get(port, port) if isinstance(port, str) else port


for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    p = c.get(probe)
    got = (dig(p, "httpGet", "path"), probe_port(p))
    if got != (path, METRICS_PORT):
        problem(where, f"{probe} must GET {path} on port {METRICS_PORT}, has path {got[0]} port {got[1]}")

grace = pod.get("terminationGracePeriodSeconds", 30)
if not isinstance(grace, int) or grace < MIN_GRACE_S:
    problem(where, f"terminationGracePeriodSeconds {grace}: at least {MIN_GRACE_S}, for the drain and LeaveGroup")


# Every cluster the tier talks to: input, exits, the next tier's input, the dead-letter topic.
def env_name(cluster):
    return "DDNN_BROKERS_" + cluster.upper().replace("-", "_").replace(".", "_")


clusters = [tier["input"]["cluster"], tier["exits"]["cluster"], topo["dead_letter"]["cluster"]]
if "next" in tier:
    clusters.append(tiers[tier["next"]]["input"]["cluster"])
env = {e.get("name"): e.get("value") for e in c.get("env") or []}
for cl in dict.fromkeys(clusters):
    if not env.get(env_name(cl)):
        problem(where, f"no {env_name(cl)}: tier {tier_name} talks to cluster {cl}, whose brokers in {TOPOLOGY} are for compose")

if problems:
    sys.exit("\n".join(problems))
print(f"  {where}: Deployment {name}: ddnn node --tier {tier_name}, topology {topo_path} from ConfigMap "
      f"{volumes[mount['name']]['configMap'].get('name')}, /readyz and /healthz on {METRICS_PORT}, "
      f"grace {grace} s, brokers of {', '.join(dict.fromkeys(clusters))}")

# --- ScaledObject -----------------------------------------------------------------------------
where, so = by_kind["ScaledObject"][0]
ref = dig(so, "spec", "scaleTargetRef") or {}
if ref.get("name") != name or ref.get("kind", "Deployment") != "Deployment":
    problem(where, f"scaleTargetRef {ref} must name the Deployment {name}")
group = tier.get("group", f"ddnn.{tier_name}")
topic = tier["input"]["topic"]
partitions = tier["input"].get("partitions", 1)
reset = tier.get("auto_offset_reset", "earliest")
triggers = [t for t in dig(so, "spec", "triggers") or [] if t.get("type") == "kafka"]
if len(triggers) != 1:
    problem(where, f"want one trigger of type kafka, found {len(triggers)}")
    sys.exit("\n".join(problems))
m = triggers[0].get("metadata") or {}
want = {
    "consumerGroup": group,
    "topic": topic,
    "allowIdleConsumers": "false",
    "offsetResetPolicy": reset,
    "bootstrapServers": env.get(env_name(tier["input"]["cluster"])),
}
for key, value in want.items():
    if str(m.get(key)).lower() != str(value).lower():
        problem(where, f"trigger {key}: {m.get(key)!r}, want {value!r} (tier {tier_name} of {TOPOLOGY}, the Deployment's env)")
lag = str(m.get("lagThreshold", ""))
if not lag.isdigit() or int(lag) < 1:
    problem(where, f"trigger lagThreshold {lag!r}: a positive whole number (what one instance drains in the target time)")
lo, hi = dig(so, "spec", "minReplicaCount"), dig(so, "spec", "maxReplicaCount")
if lo != 1:
    problem(where, f"minReplicaCount {lo}: want 1")
if hi != partitions:
    problem(where, f"maxReplicaCount {hi}: want {partitions}, the partition count of {topic} in {TOPOLOGY} "
                   f"(an instance beyond it gets no partition)")
if problems:
    sys.exit("\n".join(problems))
print(f"  {where}: ScaledObject -> Deployment {name}, group {group}, topic {topic}, "
      f"replicas 1..{hi} = {partitions} partitions, lagThreshold {lag}")

# --- PodMonitor (optional) --------------------------------------------------------------------
for where, pm in by_kind.get("PodMonitor", []):
    sel = dig(pm, "spec", "selector", "matchLabels") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        problem(where, f"selector {sel} does not select the Deployment's pods (labels {labels})")
    for ep in dig(pm, "spec", "podMetricsEndpoints") or [{}]:
        if ports.get(ep.get("port")) != METRICS_PORT:
            problem(where, f"endpoint port {ep.get('port')!r} is not the container's metrics port (ports: {ports})")
    if not problems:
        print(f"  {where}: PodMonitor selects the Deployment's pods, port {METRICS_PORT}")

if problems:
    sys.exit("\n".join(problems))
