#!/usr/bin/env bash
# Memory per idle keep-alive connection (issue 19): `herd serve --workers $WORKERS` (round-robin),
# then CONNS connections from bench/idle_clients.py, each having made one request and then
# idle; the growth of RSS, PSS and private memory of all herd processes (primary + workers)
# divided by CONNS. A warm-up of WARMUP connections first, opened and closed, so the figure is
# what a connection holds, not the first-use cost of the runtimes and allocators.
#
#   bench/idle_connections.sh      # WORKERS=2 CONNS=10000 WARMUP=500; BEFORE=/path/to/old/herd
#                                  # BARE=1: also bench/bare_axum (one process, one thread), the floor
#
# The open-files limit is raised to the hard limit for this script's processes only (the
# client holds CONNS descriptors, each worker about CONNS / WORKERS).
# Writes bench/results/idle_connections.md and prints it.
source "$(dirname "$0")/lib.sh"
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-10000}
WARMUP=${WARMUP:-500}
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((CONNS + 256)) ] || { echo "bench: open files limit $(ulimit -n) is too low for $CONNS" >&2; exit 1; }
build_release
start_redis
OUT="$ROOT/bench/results/idle_connections.md"

# the processes whose memory is measured: herd's primary and workers, or the bare server
SERVER_PIDS=()

# hold <n> <action>: n idle connections held while <action> runs, then closed; fails unless
# every one was still open
hold() {
  local n=$1 line; shift
  coproc CLIENTS { exec python3 "$ROOT/bench/idle_clients.py" "127.0.0.1:$HERD_PORT" "$n"; }
  read -r -t 180 line <&"${CLIENTS[0]}" || true
  [ "$line" = "held $n" ] || { echo "bench: clients said '$line'" >&2; exit 1; }
  "$@"
  echo >&"${CLIENTS[1]}"
  read -r -t 60 line <&"${CLIENTS[0]}" || true
  [ "$line" = "still open $n" ] || { echo "bench: '$line' of $n" >&2; exit 1; }
  wait "$CLIENTS_PID" 2>/dev/null || true
}

measure_now() { MEASURED=$(mem_total_kib "${SERVER_PIDS[@]}"); }

# grow <label>: the table row of SERVER_PIDS' growth per idle connection
grow() {
  local r0 p0 v0 r1 p1 v1
  hold "$WARMUP" true
  read -r r0 p0 v0 <<<"$(mem_total_kib "${SERVER_PIDS[@]}")"
  hold "$CONNS" measure_now
  read -r r1 p1 v1 <<<"$MEASURED"
  python3 -c "
n = $CONNS
print(f'| $1 | {$r0/1024:.1f} → {$r1/1024:.1f} | {($r1-$r0)/n:.2f} | {($p1-$p0)/n:.2f} | {($v1-$v0)/n:.2f} |')"
}

# measure <label> <binary>: herd's row
measure() {
  HERD=$2 start_herd "$WORKERS" --keepalive-timeout 300s --max-connections $((CONNS + 100))
  read -r -a SERVER_PIDS <<<"$HERD_PID $(worker_pids "$HERD_PID")"
  grow "$1"
  stop_herd
}

# measure_bare: the same row for bench/bare_axum, one process
measure_bare() {
  local target="$ROOT/target/bench-bare-axum"
  CARGO_TARGET_DIR="$target" cargo build --release --quiet --manifest-path "$ROOT/bench/bare_axum/Cargo.toml"
  HERD_PORT=$(free_port)
  "$target/release/bare-axum" "127.0.0.1:$HERD_PORT" >"$REDIS_DIR/bare-axum.out" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do grep -q ready "$REDIS_DIR/bare-axum.out" && break; sleep 0.05; done
  grep -q ready "$REDIS_DIR/bare-axum.out" || { echo "bench: bare-axum did not start" >&2; exit 1; }
  SERVER_PIDS=("$pid")
  grow "bare axum (1 process, 1 thread, system allocator)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

{
  echo "$CONNS idle keep-alive connections over $WORKERS workers ($(date -u +%Y-%m-%d)); growth of all herd processes, KiB per connection"
  echo
  echo "| binary | RSS MiB, all processes | RSS KiB / conn | PSS KiB / conn | private KiB / conn |"
  echo "|---|---|---:|---:|---:|"
  if [ -n "${BEFORE:-}" ]; then measure "herd (before)" "$BEFORE"; fi
  measure herd "$HERD"
  if [ "${BARE:-0}" = 1 ]; then measure_bare; fi
} | tee "$OUT"
