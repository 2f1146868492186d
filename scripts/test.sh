#!/usr/bin/env bash
# Every check and test, as CI runs them (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
LAST=$T0
# Each step prints how long the previous one took: CI must stay well inside 90 minutes.
step() {
  local now; now=$(date +%s)
  printf '\n== %s   (previous step %ss, total %ss)\n' "$*" "$((now - LAST))" "$((now - T0))"
  LAST=$now
}
step "setup (tansu, ONNX Runtime, Python client, cargo-machete, release build)"
bash scripts/setup.sh
. .ddnn/env
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "unused dependencies (cargo machete)"
"$MACHETE_BIN"
step "cargo test"
cargo test --workspace --no-fail-fast -- --test-threads=2
step "the models guide's worked example, from docs/models.md alone (scripts/check-guide.sh)"
bash scripts/check-guide.sh
if [ -f scripts/check-deploy.sh ]; then
  step "deployment checks (docker compose, ansible)"
  bash scripts/check-deploy.sh
fi
step "ansible's systemd path in a systemd container (scripts/ansible-systemd.sh)"
bash scripts/ansible-systemd.sh
step "images and the continuum as three hosts: paper workload, fault drills (scripts/continuum.sh)"
bash scripts/continuum.sh drills
step "the fog tier as three containers of one consumer group (scripts/continuum.sh scale)"
SKIP_IMAGES=1 bash scripts/continuum.sh scale
step "all checks passed"
