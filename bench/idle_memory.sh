#!/usr/bin/env bash
# Idle memory of herd after start (issue 19): RSS, PSS and private memory of the primary and of
# each worker of `herd serve --workers $WORKERS` with a demo user, once the start has settled
# (SETTLE seconds after "workers ready": tokio's blocking threads, which hash the demo user's
# password, linger 10 s after their last job). Next to it, the same figures of a Node cluster
# (bench/node_cluster.js, plain `http`) if `node` is on PATH, and of an older herd binary if
# BEFORE=<path> names one, all in the same run.
#
#   bench/idle_memory.sh        # WORKERS=2 SETTLE=12; BEFORE=/path/to/old/herd to compare
#
# Writes bench/results/idle_memory.md and prints it.
source "$(dirname "$0")/lib.sh"
WORKERS=${WORKERS:-2}
SETTLE=${SETTLE:-12}
build_release
start_redis
OUT="$ROOT/bench/results/idle_memory.md"

# row <name> <pid> → a table row of its RSS / PSS / private, MiB
row() {
  local r p v
  read -r r p v <<<"$(mem_kib "$2")"
  echo "| $1 | $(mib "$r") | $(mib "$p") | $(mib "$v") |"
}

# measure_herd <label> <binary>: one herd, its primary and workers after SETTLE
measure_herd() {
  local label=$1 w i=0
  HERD=$2 start_herd "$WORKERS"
  redis-cli -p "$REDIS_PORT" exists herd:user:alice | grep -q 1 || { echo "bench: no demo user" >&2; exit 1; }
  sleep "$SETTLE" # the figure is defined as "$SETTLE s after start": not a synchronisation
  row "$label primary" "$HERD_PID"
  for w in $(worker_pids "$HERD_PID"); do i=$((i + 1)); row "$label worker $i" "$w"; done
  stop_herd
}

{
  echo "Idle memory after start, $WORKERS workers, demo user alice, ${SETTLE}s after ready ($(date -u +%Y-%m-%d))"
  echo
  echo "| process | RSS MiB | PSS MiB | private MiB |"
  echo "|---|---:|---:|---:|"
  if [ -n "${BEFORE:-}" ]; then measure_herd "herd (before)" "$BEFORE"; fi
  measure_herd herd "$HERD"
  if command -v node >/dev/null; then
    port=$(free_port)
    log=$(mktemp)
    node "$ROOT/bench/node_cluster.js" 127.0.0.1 "$port" "$WORKERS" 2>"$log" &
    node_pid=$!
    PIDS+=("$node_pid")
    for _ in $(seq 200); do grep -q "workers ready" "$log" && break; sleep 0.05; done
    grep -q "workers ready" "$log" || { echo "bench: node did not start" >&2; cat "$log" >&2; exit 1; }
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null
    sleep "$SETTLE"
    row "node $(node --version) primary" "$node_pid"
    i=0
    for w in $(pgrep -P "$node_pid"); do i=$((i + 1)); row "node worker $i" "$w"; done
    kill -TERM "$node_pid"
    wait "$node_pid" 2>/dev/null || true
  fi
} | tee "$OUT"
