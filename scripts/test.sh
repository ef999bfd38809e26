#!/usr/bin/env bash
# The one test command: unit tests and the end-to-end suite (real herd binary, real redis-server
# processes on free loopback ports, started and killed by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: ${missing[*]} not found on PATH." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y redis-server" >&2
  echo "  macOS:         brew install redis" >&2
  exit 1
fi

cargo test --workspace "$@"
