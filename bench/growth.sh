#!/usr/bin/env bash
# Issue 19 part B: does the primary's overhead grow with the number of workers? For 1, 2, 4, 8
# and 16 workers, each --balance mode of MODES serves `wrk -t2 -c$CONNS -d$DURATION` on
# /healthz with `Connection: close` and with keep-alive; reported are req/s and the primary's
# CPU time per request (µs, user + system from /proc). The machine has 2 cores, so req/s cannot
# rise with N: the point is that the primary's cost per request stays flat. Rounds alternate
# the order of the worker counts; the table gives medians and the rounds.
#
#   bench/growth.sh       # ROUNDS=2 DURATION=5 CONNS=64 WORKER_COUNTS="1 2 4 8 16" MODES="round-robin round-robin:primary shared"
#
# A mode is a --balance value, optionally with :STEERING (--steering; default kernel).
#
# Writes bench/results/growth.md and prints it.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-2}
export DURATION=${DURATION:-5} CONNS=${CONNS:-64}
read -r -a COUNTS <<<"${WORKER_COUNTS:-1 2 4 8 16}"
read -r -a MODES <<<"${MODES:-round-robin round-robin:primary shared}"
read -r -a SCENARIOS <<<"${SCENARIOS:-close keepalive}"
build_release
start_redis
OUT="$ROOT/bench/results/growth.md"

declare -A RPS PRIMARY_US
for round in $(seq "$ROUNDS"); do
  read -r -a order <<<"$(alternate "$round" "${COUNTS[@]}")"
  for workers in "${order[@]}"; do
    for mode in "${MODES[@]}"; do
      mode_args "$mode"
      start_herd "$workers" "${MODE_ARGS[@]}"
      for scenario in "${SCENARIOS[@]}"; do
        hdr=(); [ "$scenario" = close ] && hdr=(-H "Connection: close")
        p0=$(cpu_ticks "$HERD_PID")
        out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "http://127.0.0.1:$HERD_PORT/healthz")
        p1=$(cpu_ticks "$HERD_PID")
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        RPS[$workers,$mode,$scenario]+="$rps "
        PRIMARY_US[$workers,$mode,$scenario]+="$(python3 -c "print(f'{($p1 - $p0) / $(getconf CLK_TCK) / $requests * 1e6:.2f}')") "
        echo "round $round workers $workers $mode $scenario: $rps req/s, primary $((p1 - p0)) ticks for $requests requests" >&2
      done
      stop_herd
    done
  done
done

{
  echo "\`wrk -t2 -c$CONNS -d${DURATION}s\` on \`/healthz\`, $ROUNDS rounds, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
  echo "| scenario | mode | workers | req/s, median | rounds | primary CPU µs per request, median | rounds |"
  echo "|---|---|---:|---:|---|---:|---|"
  for scenario in "${SCENARIOS[@]}"; do
    for mode in "${MODES[@]}"; do
      for workers in "${COUNTS[@]}"; do
        # shellcheck disable=SC2086
        echo "| $scenario | $mode | $workers | $(MEDIAN_DIGITS=0 median ${RPS[$workers,$mode,$scenario]}) | ${RPS[$workers,$mode,$scenario]}| $(MEDIAN_DIGITS=2 median ${PRIMARY_US[$workers,$mode,$scenario]}) | ${PRIMARY_US[$workers,$mode,$scenario]}|"
      done
    done
  done
} | tee "$OUT"
