#!/usr/bin/env bash
# Container images built on a machine without a registry (Docker engine with the classic builder,
# nothing can be pulled). See docs/deploy.md, "Images built here".
#
#   scripts/images.sh base      local Debian bookworm base from Debian's packages (debootstrap
#                               --variant=minbase, docker import); cached: skipped when the tag exists
#   scripts/images.sh runtime   the Dockerfile's `prebuilt` target: the runtime stage fed with the
#                               host-built ddnn (debug info stripped) and ONNX Runtime library
#   scripts/images.sh smoke     run the image for real: --version, then one container (all tiers of
#                               topology/local.toml, --cpus 1 --memory 512m) against a tansu broker
#                               on the host; waits for the health check, sends digits, cleans up
#   scripts/images.sh broker    CI's test broker: tansu (the host's build) on the local base
#                               ($DDNN_BROKER_IMAGE, scripts/continuum/broker.Dockerfile)
#   scripts/images.sh wan       the WAN link of the continuum drills: ddnn-wan (nodes/wan, the host's
#                               release build) on the local base ($DDNN_WAN_IMAGE)
#   scripts/images.sh source    the users' `docker build .` (source build of ddnn, ONNX Runtime from
#                               PyPI) on local stand-ins for rust: and python: (the host's toolchain)
#   scripts/images.sh all       base + runtime (default)
#   scripts/images.sh clean     remove the images this script (and scripts/ansible-systemd.sh) made:
#                               labels org.ddnn.base=debootstrap|stand-in|systemd, $DDNN_IMAGE,
#                               the broker, wan and source images
#
# Environment: DDNN_IMAGE (default ddnn:local), DDNN_BASE_TAG (default ddnn-local/debian:bookworm),
# DDNN_BIN (host binary, default target/release/ddnn; build it first with
# `cargo build --release -p ddnn`), ORT_DYLIB_PATH (default .ddnn/ort/libonnxruntime.so.1.31.1),
# TANSU_BIN (smoke; default ~/.cache/ddnn/tansu/bin/tansu), DEMO_BIN (smoke: the ddnn that sends
# digits from the host, default $DDNN_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
[ -f .ddnn/env ] && . .ddnn/env
IMAGE=${DDNN_IMAGE:-ddnn:local}
BASE_TAG=${DDNN_BASE_TAG:-ddnn-local/debian:bookworm}
SLIM_TAG=debian:bookworm-slim
ORT_VERSION=1.31.1
DDNN_BIN=${DDNN_BIN:-$ROOT/target/release/ddnn}
ORT_LIB=${ORT_DYLIB_PATH:-$ROOT/.ddnn/ort/libonnxruntime.so.$ORT_VERSION}
say() { printf '[images] %s\n' "$*"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
size_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

base() {
  if have_image "$BASE_TAG"; then
    say "base $BASE_TAG exists ($(size_mb "$BASE_TAG")), skipped (remove: docker rmi $BASE_TAG)"
  else
    command -v debootstrap >/dev/null || { say "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }
    local mirror rootfs t
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /tmp/ddnn-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' RETURN
    t=$(now)
    say "debootstrap --variant=minbase bookworm $rootfs $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
      || { tail -n 20 "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    say "debootstrap: $(took "$t"), rootfs $(du -sh "$rootfs" | cut -f1)"
    # Slim it the way debian:*-slim is: no downloaded .debs, package lists, docs, man pages,
    # translations; apt sources as on this host (bookworm, -updates, -security).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    rm -f "$rootfs"/var/cache/apt/*.bin
    # What debian:*-slim configures, so that a later `apt-get install` layer stays small too: no apt
    # caches or translations kept, no docs, man pages or locales unpacked.
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
      >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
      rm -f "$rootfs/etc/apt/sources.list"
    fi
    say "slimmed rootfs $(du -sh "$rootfs" | cut -f1)"
    t=$(now)
    tar -C "$rootfs" -c . | docker import \
      --change 'LABEL org.ddnn.base=debootstrap' --change 'CMD ["bash"]' - "$BASE_TAG" >/dev/null
    say "docker import $BASE_TAG: $(took "$t"), $(size_mb "$BASE_TAG")"
  fi
  if have_image "$SLIM_TAG"; then
    if [ "$(docker image inspect -f '{{.Id}}' "$SLIM_TAG")" = "$(docker image inspect -f '{{.Id}}' "$BASE_TAG")" ]; then
      say "$SLIM_TAG is $BASE_TAG"
    else
      say "$SLIM_TAG exists and is not ours: left as it is, the Dockerfile builds on it"
    fi
  else
    docker tag "$BASE_TAG" "$SLIM_TAG"
    say "no $SLIM_TAG here: tagged $BASE_TAG as $SLIM_TAG (remove: docker rmi $SLIM_TAG)"
  fi
}

runtime() {
  [ -x "$DDNN_BIN" ] || { say "no $DDNN_BIN: run cargo build --release -p ddnn first"; exit 1; }
  [ -f "$ORT_LIB" ] || { say "no $ORT_LIB: run scripts/setup.sh (or set ORT_DYLIB_PATH)"; exit 1; }
  have_image "$SLIM_TAG" || { say "no $SLIM_TAG: run scripts/images.sh base first"; exit 1; }
  local t
  mkdir -p dist
  objcopy --strip-debug "$DDNN_BIN" dist/ddnn
  cp "$ORT_LIB" "dist/libonnxruntime.so.$ORT_VERSION"
  say "dist/: ddnn $(du -h dist/ddnn | cut -f1) (debug info stripped), libonnxruntime $(du -h "dist/libonnxruntime.so.$ORT_VERSION" | cut -f1)"
  t=$(now)
  DOCKER_BUILDKIT=0 docker build --target prebuilt -t "$IMAGE" . >.ddnn/images-build.log 2>&1 \
    || { tail -n 30 .ddnn/images-build.log; exit 1; }
  say "docker build --target prebuilt -t $IMAGE: $(took "$t") (log .ddnn/images-build.log)"
  grep -m1 'Sending build context' .ddnn/images-build.log | sed 's/^/[images]   /' || true
  local base_b img_b
  base_b=$(docker image inspect -f '{{.Size}}' "$SLIM_TAG")
  img_b=$(docker image inspect -f '{{.Size}}' "$IMAGE")
  say "sizes: $SLIM_TAG $(size_mb "$SLIM_TAG"), $IMAGE $(size_mb "$IMAGE"), added over the base $(awk -v a="$img_b" -v b="$base_b" 'BEGIN { printf "%.1f MB", (a - b) / 1e6 }')"
  docker history --format '  {{.Size}}\t{{.CreatedBy}}' "$IMAGE" | head -n 12 | cut -c1-110
}

# A small image from one host binary (debug info stripped) and a Dockerfile of scripts/continuum/.
tool_image() {
  local tag=$1 bin=$2 dockerfile=$3 ctx t
  [ -x "$bin" ] || { say "no $bin"; exit 1; }
  have_image "$BASE_TAG" || { say "no $BASE_TAG: run scripts/images.sh base first"; exit 1; }
  ctx=$(mktemp -d /tmp/ddnn-ctx.XXXXXX)
  objcopy --strip-debug "$bin" "$ctx/$(basename "$bin")"
  cp "$dockerfile" "$ctx/Dockerfile"
  t=$(now)
  DOCKER_BUILDKIT=0 docker build -t "$tag" "$ctx" >"$ctx.log" 2>&1 || { tail -n 30 "$ctx.log"; rm -rf "$ctx" "$ctx.log"; exit 1; }
  rm -rf "$ctx" "$ctx.log"
  say "docker build -t $tag: $(took "$t"), $(size_mb "$tag") ($(basename "$bin") stripped on the base)"
}

broker() {
  tool_image "${DDNN_BROKER_IMAGE:-ddnn-local/tansu:0.6.0}" "${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu}" \
    scripts/continuum/broker.Dockerfile
}

wan() {
  tool_image "${DDNN_WAN_IMAGE:-ddnn-local/wan:latest}" "${DDNN_WAN_BIN:-$ROOT/target/release/ddnn-wan}" \
    scripts/continuum/wan.Dockerfile
}

# The Dockerfile's source path (`docker build .`: stages `build` and `ort`) needs
# rust:1.95-bookworm and python:3.11-slim-bookworm, which cannot be pulled here. Local stand-ins
# on our base: the host's Rust toolchain (bin, lib, libexec: ~600 MB; docs left out) with gcc,
# and Debian's Python 3.11 with pip; both with the host's CA bundle, the only one HTTPS to
# crates.io and PyPI works with here. Tagged only where no such image exists, labelled
# org.ddnn.base=stand-in. Then the users' command, `docker build -t $DDNN_SOURCE_IMAGE .`, as is.
source_build() {
  have_image "$BASE_TAG" || { say "no $BASE_TAG: run scripts/images.sh base first"; exit 1; }
  local ctx t tc
  tc=$(rustc --print sysroot)
  ctx=$(mktemp -d /tmp/ddnn-standin.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  if ! have_image rust:1.95-bookworm; then
    t=$(now)
    mkdir -p "$ctx/rust/toolchain"
    cp -a "$tc/bin" "$tc/lib" "$tc/libexec" "$ctx/rust/toolchain/"
    cp "$ctx/ca-certificates.crt" "$ctx/rust/"
    cat >"$ctx/rust/Dockerfile" <<DOCKERFILE
FROM $BASE_TAG
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev binutils \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:\$PATH CARGO_HOME=/usr/local/cargo
LABEL org.ddnn.base=stand-in
DOCKERFILE
    DOCKER_BUILDKIT=0 docker build -t rust:1.95-bookworm "$ctx/rust" >"$ctx/rust.log" 2>&1 \
      || { tail -n 30 "$ctx/rust.log"; exit 1; }
    say "stand-in rust:1.95-bookworm ($(rustc --version) from the host): $(took "$t"), $(size_mb rust:1.95-bookworm)"
  fi
  if ! have_image python:3.11-slim-bookworm; then
    t=$(now)
    mkdir -p "$ctx/python"
    cp "$ctx/ca-certificates.crt" "$ctx/python/"
    cat >"$ctx/python/Dockerfile" <<DOCKERFILE
FROM $BASE_TAG
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
LABEL org.ddnn.base=stand-in
DOCKERFILE
    DOCKER_BUILDKIT=0 docker build -t python:3.11-slim-bookworm "$ctx/python" >"$ctx/python.log" 2>&1 \
      || { tail -n 30 "$ctx/python.log"; exit 1; }
    say "stand-in python:3.11-slim-bookworm (Debian's python3): $(took "$t"), $(size_mb python:3.11-slim-bookworm)"
  fi
  t=$(now)
  local tag=${DDNN_SOURCE_IMAGE:-ddnn:source}
  say "DOCKER_BUILDKIT=0 docker build -t $tag . (the users' build: stages build, ort, runtime)"
  DOCKER_BUILDKIT=0 docker build -t "$tag" . >.ddnn/images-source.log 2>&1 \
    || { tail -n 40 .ddnn/images-source.log; exit 1; }
  say "docker build -t $tag .: $(took "$t") (log .ddnn/images-source.log), $(size_mb "$tag")"
  say "$tag --version: $(docker run --rm "$tag" --version)"
}

smoke() {
  have_image "$IMAGE" || { say "no $IMAGE: run scripts/images.sh first"; exit 1; }
  local tansu=${TANSU_BIN:-$HOME/.cache/ddnn/tansu/bin/tansu} demo=${DEMO_BIN:-$DDNN_BIN}
  # globals, not locals: the EXIT trap runs after this function has returned
  name=ddnn-smoke-$$ bpid="" dir=""; local gw port mport t status
  say "docker run --rm $IMAGE --version: $(docker run --rm "$IMAGE" --version)"
  gw=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
  [ -n "$gw" ] || gw=$(ip -4 -o addr show docker0 | awk '{ split($4, a, "/"); print a[1] }')
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d /tmp/ddnn-smoke.XXXXXX)
  cleanup() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    [ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null || true
    rm -rf "$dir"
  }
  trap cleanup EXIT
  (cd "$dir" && exec "$tansu" broker --listener-url "tcp://0.0.0.0:$port" \
    --advertised-listener-url "tcp://$gw:$port" --storage-engine sqlite://t.db >"$dir/broker.log" 2>&1) &
  bpid=$!
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  # tansu takes sqlite://FILE relative to its working directory (an absolute path gets doubled).
  kill -0 "$bpid" 2>/dev/null || { cat "$dir/broker.log"; say "broker did not start"; exit 1; }
  say "tansu broker pid $bpid on $gw:$port"
  t=$(now)
  docker run -d --name "$name" --cpus 1 --memory 512m -p "127.0.0.1:$mport:9464" \
    -e "DDNN_BROKERS_LOCAL=$gw:$port" -e DDNN__METRICS__LISTEN=0.0.0.0:9464 -e DDNN_FETCH_MODE=adaptive \
    --health-interval 2s --health-start-period 30s \
    "$IMAGE" node --topology /opt/ddnn/topology/local.toml --tier all >/dev/null
  say "docker run --cpus 1 --memory 512m $IMAGE node --tier all (container $name, metrics 127.0.0.1:$mport)"
  for _ in $(seq 1 120); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$name")
    [ "$status" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.5
  done
  say "health: $status after $(took "$t")"
  [ "$status" = healthy ] || { docker logs --tail 30 "$name"; exit 1; }
  say "/healthz from the host: $(curl -fsS "http://127.0.0.1:$mport/healthz")"
  DDNN_BROKERS_LOCAL="$gw:$port" ORT_DYLIB_PATH=$ORT_LIB timeout 120 "$demo" demo --topology topology/local.toml \
    --digits models/heldout.bin \
    --count "${SMOKE_COUNT:-50}" --rate 100 --timeout-s 60 >"$dir/demo.out"
  tail -n 8 "$dir/demo.out"
  grep -Eq "^answered: +${SMOKE_COUNT:-50} " "$dir/demo.out" || { say "not every digit was answered"; exit 1; }
  docker stats --no-stream --format '[images] container: cpu {{.CPUPerc}}, memory {{.MemUsage}}' "$name"
  say "smoke passed; container, broker and temp dir removed"
}

clean() {
  for tag in "$IMAGE" "${DDNN_BROKER_IMAGE:-ddnn-local/tansu:0.6.0}" "${DDNN_WAN_IMAGE:-ddnn-local/wan:latest}"; do
    docker rmi "$tag" >/dev/null 2>&1 && say "removed $tag" || true
  done
  # Images built on the base first (scripts/ansible-systemd.sh's, the source build's stand-ins).
  for tag in "${DDNN_SYSTEMD_IMAGE:-ddnn-local/systemd:bookworm}" rust:1.95-bookworm python:3.11-slim-bookworm; do
    if have_image "$tag" && [[ "$(docker image inspect -f '{{index .Config.Labels "org.ddnn.base"}}' "$tag")" =~ ^(systemd|stand-in)$ ]]; then
      docker rmi "$tag" >/dev/null && say "removed $tag"
    fi
  done
  docker rmi "${DDNN_SOURCE_IMAGE:-ddnn:source}" >/dev/null 2>&1 && say "removed ${DDNN_SOURCE_IMAGE:-ddnn:source}" || true
  for tag in "$SLIM_TAG" "$BASE_TAG"; do
    if have_image "$tag" && [ "$(docker image inspect -f '{{index .Config.Labels "org.ddnn.base"}}' "$tag")" = debootstrap ]; then
      docker rmi "$tag" >/dev/null && say "removed $tag"
    fi
  done
}

case "${1:-all}" in
  base) base ;;
  runtime) runtime ;;
  smoke) smoke ;;
  broker) broker ;;
  source) source_build ;;
  wan) wan ;;
  all) base; runtime ;;
  clean) clean ;;
  *) echo "usage: $0 [base|runtime|broker|wan|source|smoke|all|clean]" >&2; exit 2 ;;
esac
