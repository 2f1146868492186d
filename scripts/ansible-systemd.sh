#!/usr/bin/env bash
# The ansible playbook's systemd path, for real (scripts/check-deploy.sh runs its launcher path):
#   1. a systemd image from the local Debian base (ddnn-local/debian:bookworm, made by
#      `scripts/images.sh base` when missing): systemd, systemd-sysv, python3, openssh-server,
#      sudo, curl; user `deploy` with passwordless sudo. Classic builder, nothing pulled.
#   2. a container of it with systemd as PID 1 (no --privileged), until `systemctl
#      is-system-running` says `running`; a throwaway SSH key for `deploy`;
#   3. ansible/site.yml with the default service manager (systemd) against it over SSH
#      (ansible/ci/systemd-inventory.yml: broker, edge, fog and cloud on that one host, become
#      root with sudo); binary, ONNX Runtime, models and tansu from this machine (.ddnn/env);
#   4. a second run, which must report changed=0;
#   5. ddnn-broker and ddnn-{edge,fog,cloud} active, /readyz of each tier from this machine
#      (container address), `ddnn demo` from this machine sends 50 digits through the deployed
#      continuum (the broker advertises the container's address) and every one is answered;
#   6. kill -9 of the edge node: systemd restarts it (Restart=on-failure), it is ready again.
# Everything it started (container, SSH masters, temp dir with key) is removed on exit, also on
# failure. The images stay cached: `scripts/ansible-systemd.sh clean` removes the systemd image.
#
# Environment: DDNN_BIN, ORT_DYLIB_PATH, TANSU_BIN (from .ddnn/env), DDNN_BASE_TAG (default
# ddnn-local/debian:bookworm), DDNN_SYSTEMD_IMAGE (default ddnn-local/systemd:bookworm),
# DEMO_COUNT (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE_TAG=${DDNN_BASE_TAG:-ddnn-local/debian:bookworm}
IMAGE=${DDNN_SYSTEMD_IMAGE:-ddnn-local/systemd:bookworm}
LABEL=org.ddnn.ci=ansible-systemd
HOST=ddnn-systemd  # the inventory name (ansible/ci/systemd-inventory.yml)
DEMO_COUNT=${DEMO_COUNT:-50}
say() { printf '[systemd] %s\n' "$*"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

if [ "${1:-}" = clean ]; then
  if docker image inspect "$IMAGE" >/dev/null 2>&1 \
    && [ "$(docker image inspect -f '{{index .Config.Labels "org.ddnn.base"}}' "$IMAGE")" = systemd ]; then
    docker rmi "$IMAGE" >/dev/null && say "removed $IMAGE"
  else
    say "no $IMAGE of ours"
  fi
  exit 0
fi

# shellcheck source=/dev/null
[ -f .ddnn/env ] && . .ddnn/env
: "${DDNN_BIN:?run scripts/setup.sh first}"
: "${ORT_DYLIB_PATH:?run scripts/setup.sh first}"
TANSU_BIN=${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}
for f in "$DDNN_BIN" "$ORT_DYLIB_PATH" "$TANSU_BIN"; do [ -f "$f" ] || { say "missing $f"; exit 1; }; done

T0=$(now)
STEPS=()
step_t=""
step_name=""
step() {  # closes the previous step (prints its duration), opens the next one
  if [ -n "$step_name" ]; then
    local d
    d=$(took "$step_t")
    STEPS+=("$(printf '%8s  %s' "$d" "$step_name")")
    say "  (took $d)"
  fi
  step_name=$1
  step_t=$(now)
  [ -n "$step_name" ] && say "$step_name"
  return 0
}

NAME=ddnn-systemd-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d /tmp/ddnn-systemd.XXXXXX)
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && docker inspect "$NAME" >/dev/null 2>&1; then
    say "failed (rc $rc): state of $NAME"
    docker exec "$NAME" systemctl --no-pager --failed
    # (cgroup v1 with a read-only /sys/fs/cgroup: systemd logs "Failed to get cgroup ID" on every
    # unit change, harmless)
    docker exec "$NAME" journalctl --no-pager -n 200 -u ddnn-broker -u ddnn-edge -u ddnn-fog -u ddnn-cloud \
      | grep -v "Failed to get cgroup ID" | tail -n 40
  fi
  # ansible's SSH masters (ControlPersist) live in $TMP/cp: close them before the host goes away
  for sock in "$TMP"/cp/*; do [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit "$HOST" >/dev/null 2>&1; done
  docker rm -f "$NAME" >/dev/null 2>&1
  rm -rf "$TMP"
  say "removed container $NAME and $TMP"
  exit "$rc"
}
trap cleanup EXIT

if ! command -v ssh-keygen >/dev/null || ! command -v ssh >/dev/null; then
  step "openssh-client (Debian): ansible's SSH connection and the throwaway key"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq openssh-client >/dev/null; else sudo apt-get install -y -qq openssh-client >/dev/null; fi
fi
VENV=.ddnn/ansible-venv
if [ ! -x "$VENV/bin/ansible-playbook" ]; then
  step "ansible-core and ansible-lint into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "ansible-core>=2.19,<2.20" "ansible-lint>=25"
fi
export PATH="$ROOT/$VENV/bin:$PATH"

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  step "local Debian base $BASE_TAG (scripts/images.sh base)"
  DDNN_BASE_TAG=$BASE_TAG bash scripts/images.sh base
fi

step "1. systemd image $IMAGE (classic builder, cached layers)"
# No context: the Dockerfile comes on stdin. The layers are cached, so a rerun takes a second;
# a new base invalidates them.
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" - >"$TMP/build.log" 2>&1 <<DOCKERFILE || { cat "$TMP/build.log"; exit 1; }
FROM $BASE_TAG
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      systemd systemd-sysv python3 openssh-server sudo curl >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && systemctl mask getty.target console-getty.service \\
 && useradd --create-home --shell /bin/bash deploy \\
 && install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh \\
 && echo 'deploy ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy
LABEL org.ddnn.base=systemd
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
DOCKERFILE
say "  $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f MB", $1 / 1e6 }')"

step "2. container $NAME, systemd as PID 1"
docker run -d --name "$NAME" --hostname "$HOST" --label "$LABEL" \
  --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro "$IMAGE" /sbin/init >/dev/null
state=""
for _ in $(seq 1 120); do
  state=$(docker exec "$NAME" systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded) break ;; esac
  sleep 0.5
done
# degraded = booted, some unit failed: not expected here, so not accepted.
[ "$state" = running ] || { say "systemctl is-system-running: '$state'"; docker exec "$NAME" systemctl --no-pager --failed; exit 1; }
IP=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "$NAME")
say "  is-system-running: $state, PID 1: $(docker exec "$NAME" ps -o comm= -p 1), address $IP"
ssh-keygen -q -t ed25519 -N '' -C "ddnn-ci-$NAME" -f "$TMP/id_ed25519"
docker exec -i "$NAME" sh -c 'cat >/home/deploy/.ssh/authorized_keys && chown deploy: /home/deploy/.ssh/authorized_keys && chmod 0600 /home/deploy/.ssh/authorized_keys' <"$TMP/id_ed25519.pub"
ssh_c() { ssh -i "$TMP/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5 "deploy@$IP" "$@"; }
for _ in $(seq 1 50); do ssh_c true 2>/dev/null && break; sleep 0.2; done
say "  ssh deploy@$IP, sudo: $(ssh_c sudo -n id -un)"

mkdir -p "$TMP/cp"
cat >"$TMP/vars.yml" <<VARS
ansible_host: $IP
ansible_ssh_private_key_file: $TMP/id_ed25519
ddnn_binary_src: $DDNN_BIN
ddnn_ort_src: $ORT_DYLIB_PATH
ddnn_models_src: $ROOT/models/
ddnn_broker_bin_src: $TANSU_BIN
ddnn_broker_advertised_host: $IP
ddnn_brokers: {edge: ["$IP:9092"], fog: ["$IP:9092"], cloud: ["$IP:9092"]}
ddnn_metrics_ports: {edge: 9464, fog: 9465, cloud: 9466}
VARS
run_playbook() {
  (cd ansible && ANSIBLE_SSH_CONTROL_PATH_DIR="$TMP/cp" ansible-playbook -i ci/systemd-inventory.yml site.yml -e "@$TMP/vars.yml") >"$1" 2>&1 \
    || { tail -n 40 "$1"; say "ansible-playbook failed (log $1)"; exit 1; }
  grep -A3 '^PLAY RECAP' "$1" | sed 's/^/  /'
}
recap() { grep -E "^$HOST +: " "$1" | grep -oE "$2=[0-9]+" | cut -d= -f2; }

step "3. ansible-playbook site.yml (systemd), first run"
run_playbook .ddnn/ansible-systemd-run1.log
changed1=$(recap .ddnn/ansible-systemd-run1.log changed)
if [ "$(recap .ddnn/ansible-systemd-run1.log failed)" != 0 ] || [ "$(recap .ddnn/ansible-systemd-run1.log unreachable)" != 0 ]; then
  say "first run: failed or unreachable hosts"
  exit 1
fi

step "4. ansible-playbook site.yml (systemd), second run"
run_playbook .ddnn/ansible-systemd-run2.log
changed2=$(recap .ddnn/ansible-systemd-run2.log changed)
if [ "$changed2" != 0 ] || [ "$(recap .ddnn/ansible-systemd-run2.log failed)" != 0 ]; then
  say "SECOND RUN CHANGED SOMETHING (changed=$changed2), tasks:"
  grep -E '^(changed|failed|fatal):' -B2 .ddnn/ansible-systemd-run2.log | grep -E '^TASK|^(changed|failed|fatal)' | sed 's/^/  /'
  exit 1
fi
say "  changed: first run $changed1, second run $changed2"

step "5. units active, /readyz, digits through the deployed continuum"
for u in ddnn-broker ddnn-edge ddnn-fog ddnn-cloud; do
  s=$(docker exec "$NAME" systemctl is-active "$u" || true)
  [ "$s" = active ] || { say "$u: $s"; exit 1; }
  say "  $u: $s (main PID $(docker exec "$NAME" systemctl show -p MainPID --value "$u"), user $(docker exec "$NAME" systemctl show -p User --value "$u" | sed 's/^$/root/'))"
done
for t in edge:9464 fog:9465 cloud:9466; do
  ready=0
  for _ in $(seq 1 300); do curl -sf --max-time 5 "http://$IP:${t#*:}/readyz" >/dev/null && { ready=1; break; }; sleep 0.1; done
  [ "$ready" = 1 ] || { say "tier ${t%%:*}: http://$IP:${t#*:}/readyz not ready"; exit 1; }
  say "  tier ${t%%:*}: http://$IP:${t#*:}/readyz 200"
done
# The demo runs here, on the deployed edge topology (its brokers: the container's address), with
# the models next to it as on the host (model paths are relative to the topology file).
mkdir -p "$TMP/demo/etc"
ln -s "$ROOT/models" "$TMP/demo/models"
docker cp "$NAME:/opt/ddnn/etc/topology-edge.toml" "$TMP/demo/etc/topology-edge.toml"
demo_rc=0
"$DDNN_BIN" demo --topology "$TMP/demo/etc/topology-edge.toml" --digits models/heldout.bin \
  --count "$DEMO_COUNT" --rate 100 --timeout-s 60 >"$TMP/demo.log" 2>&1 || demo_rc=$?
sed 's/^/  /' "$TMP/demo.log"
answered=$(awk '/^answered:/ { print $2 }' "$TMP/demo.log")
if [ "$demo_rc" != 0 ] || [ "$answered" != "$DEMO_COUNT" ]; then
  say "ddnn demo: rc $demo_rc, answered '$answered' of $DEMO_COUNT"
  exit 1
fi

step "6. Restart=on-failure: kill -9 of the edge node, systemd brings it back"
pid_before=$(docker exec "$NAME" systemctl show -p MainPID --value ddnn-edge)
docker exec "$NAME" kill -9 "$pid_before"
pid_after=""
for _ in $(seq 1 100); do
  pid_after=$(docker exec "$NAME" systemctl show -p MainPID --value ddnn-edge)
  [ "$pid_after" != 0 ] && [ "$pid_after" != "$pid_before" ] && break
  sleep 0.1
done
if [ "$pid_after" = 0 ] || [ "$pid_after" = "$pid_before" ]; then
  say "ddnn-edge not restarted (MainPID $pid_after)"
  exit 1
fi
ready=0
for _ in $(seq 1 300); do curl -sf --max-time 5 "http://$IP:9464/readyz" >/dev/null && { ready=1; break; }; sleep 0.1; done
[ "$ready" = 1 ] || { say "edge not ready after its restart"; exit 1; }
say "  ddnn-edge: PID $pid_before killed, now PID $pid_after (NRestarts $(docker exec "$NAME" systemctl show -p NRestarts --value ddnn-edge)), /readyz 200"
step ""

say "durations:"
printf '  %s\n' "${STEPS[@]}"
say "total $(took "$T0"); changed=$changed1 then changed=$changed2; $answered/$DEMO_COUNT digits answered"
