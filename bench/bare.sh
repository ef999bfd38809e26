#!/usr/bin/env bash
# Issue 19 part B: the physical floor of primary-accept on this machine, next to herd, in one
# run. bench/bare_handoff.c (compiled here with cc -O2) is the least a primary can do: accept,
# one sendmsg(SCM_RIGHTS) per worker per batch, close; or no primary work at all (each worker
# on its own SO_REUSEPORT listener). herd's shared and round-robin modes run in the same
# rounds. Load: `wrk -t2 -c$CONNS -d$DURATION` with `Connection: close` (a new connection per
# request); bare servers answer any path, herd serves /healthz. Reported per server: req/s, and
# the primary's and the workers' CPU time per connection (µs, user + system from /proc).
#
#   bench/bare.sh         # ROUNDS=3 DURATION=6 CONNS=64 WORKERS=2
#   OTHER_HERD=/tmp/herd-old SERVERS="herd-round-robin other-round-robin" bench/bare.sh
#                         # other-<mode>: another herd build in the same rounds (an A/B)
#
# Writes bench/results/bare.md and prints it.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-6} CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
read -r -a SERVERS <<<"${SERVERS:-bare-reuseport bare-handoff herd-shared herd-round-robin}"
build_release
start_redis
OUT="$ROOT/bench/results/bare.md"
BARE="$REDIS_DIR/bare_handoff"
cc -O2 -Wall -o "$BARE" "$ROOT/bench/bare_handoff.c"

declare -A RPS PRIMARY_US WORKER_US
for round in $(seq "$ROUNDS"); do
  read -r -a order <<<"$(alternate "$round" "${SERVERS[@]}")"
  for server in "${order[@]}"; do
    case $server in
      bare-*)
        HERD_PORT=$(free_port)
        "$BARE" "$HERD_PORT" "$WORKERS" "${server#bare-}" >"$REDIS_DIR/bare.out" &
        HERD_PID=$!
        PIDS+=("$HERD_PID")
        for _ in $(seq 100); do grep -q ready "$REDIS_DIR/bare.out" && break; sleep 0.05; done
        path=/ ;;
      herd-*) start_herd "$WORKERS" --balance "${server#herd-}"; path=/healthz ;;
      other-*) HERD=$OTHER_HERD start_herd "$WORKERS" --balance "${server#other-}"; path=/healthz ;;
    esac
    p0=$(cpu_ticks "$HERD_PID"); w0=$(workers_ticks)
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" "http://127.0.0.1:$HERD_PORT$path")
    p1=$(cpu_ticks "$HERD_PID"); w1=$(workers_ticks)
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    RPS[$server]+="$rps "
    per() { python3 -c "print(f'{$1 / $(getconf CLK_TCK) / $requests * 1e6:.2f}')"; }
    PRIMARY_US[$server]+="$(per $((p1 - p0))) "
    WORKER_US[$server]+="$(per $((w1 - w0))) "
    echo "round $round $server: $rps req/s, primary $((p1 - p0)) ticks, workers $((w1 - w0)) ticks, $requests requests" >&2
    kill -TERM "$HERD_PID" 2>/dev/null || true; wait "$HERD_PID" 2>/dev/null || true
  done
done

{
  echo "\`wrk -t2 -c$CONNS -d${DURATION}s -H 'Connection: close'\`, $WORKERS workers, $ROUNDS rounds, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
  echo "| server | req/s, median | rounds | primary µs per connection, median | all workers µs per connection, median | primary ÷ average worker |"
  echo "|---|---:|---|---:|---:|---:|"
  for server in "${SERVERS[@]}"; do
    # shellcheck disable=SC2086
    p=$(MEDIAN_DIGITS=2 median ${PRIMARY_US[$server]}); w=$(MEDIAN_DIGITS=2 median ${WORKER_US[$server]})
    # shellcheck disable=SC2086
    echo "| $server | $(MEDIAN_DIGITS=0 median ${RPS[$server]}) | ${RPS[$server]}| $(MEDIAN_DIGITS=2 median ${PRIMARY_US[$server]}) | $(MEDIAN_DIGITS=2 median ${WORKER_US[$server]}) | $(python3 -c "print(f'{$p / max(0.01, $w / $WORKERS):.2f}')") |"
  done
} | tee "$OUT"
