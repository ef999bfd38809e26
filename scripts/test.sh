#!/usr/bin/env bash
# The one test command: unit tests and the end-to-end suite (real herd binary, real redis-server
# processes on free loopback ports, started and killed by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in redis-server redis-cli haproxy nginx; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: ${missing[*]} not found on PATH." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y redis-server haproxy nginx libnginx-mod-stream" >&2
  echo "  macOS:         brew install redis haproxy nginx" >&2
  exit 1
fi

# Lints first: they take seconds once built, and a red lint is cheaper to see than a red test.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all --check
else
  echo "scripts/test.sh: rustfmt not installed (rustup component add rustfmt): format NOT checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --quiet -- -D warnings
else
  echo "scripts/test.sh: clippy not installed (rustup component add clippy): lints NOT checked" >&2
fi

cargo test --workspace "$@"
