#!/usr/bin/env bash
# Every check and test, as CI runs them (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .ddnn/env
step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo test"
cargo test --workspace -- --test-threads=2
if [ -f scripts/check-deploy.sh ]; then
  step "deployment checks (docker compose, ansible)"
  bash scripts/check-deploy.sh
fi
step "all checks passed"
