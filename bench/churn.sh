#!/usr/bin/env bash
# Issue 19 part B: what primary-accept costs on connection churn, as same-run ratios.
# For each worker count, ROUNDS rounds; in each round every --balance mode (the order
# alternates from round to round) serves `wrk -t2 -c$CONNS -d$DURATION` on /healthz, with
# `Connection: close` (a new connection per request) and with keep-alive. Per round: each mode's
# req/s over shared's in that round, and the primary's CPU ticks over the average worker's.
# The table gives the medians over the rounds, and the rounds themselves.
#
#   bench/churn.sh        # ROUNDS=3 DURATION=6 CONNS=64 WORKER_COUNTS="2 4" SPREAD_SOURCES=1
#                         # MODES="shared round-robin ip-hash round-robin:primary ip-hash:primary"
#
# A mode is a --balance value, optionally with :STEERING (--steering; default kernel). With
# SPREAD_SOURCES=1 (the default) wrk runs under bench/spread_sources.c, so its connections come
# from 250 loopback addresses: ip-hash then spreads as it would over real clients.
#
# Writes bench/results/churn.md and prints it.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-6} CONNS=${CONNS:-64}
read -r -a COUNTS <<<"${WORKER_COUNTS:-2 4}"
read -r -a MODES <<<"${MODES:-shared round-robin ip-hash round-robin:primary ip-hash:primary}"
read -r -a SCENARIOS <<<"${SCENARIOS:-close keepalive}"
build_release
start_redis
if [ "${SPREAD_SOURCES:-1}" = 1 ]; then
  SHIM="$REDIS_DIR/spread_sources.so"
  cc -O2 -Wall -shared -fPIC -o "$SHIM" "$ROOT/bench/spread_sources.c" -ldl
  export WRK_PRELOAD="$SHIM"
fi
OUT="$ROOT/bench/results/churn.md"

declare -A RPS RATIO SHARE
for workers in "${COUNTS[@]}"; do
  for round in $(seq "$ROUNDS"); do
    read -r -a order <<<"$(alternate "$round" "${MODES[@]}")"
    for mode in "${order[@]}"; do
      mode_args "$mode"
      start_herd "$workers" "${MODE_ARGS[@]}"
      for scenario in "${SCENARIOS[@]}"; do
        hdr=(); [ "$scenario" = close ] && hdr=(-H "Connection: close")
        p0=$(cpu_ticks "$HERD_PID"); w0=$(workers_ticks)
        RPS[$workers,$mode,$scenario]=$(wrk_rps "http://127.0.0.1:$HERD_PORT/healthz" "${hdr[@]}")
        p1=$(cpu_ticks "$HERD_PID"); w1=$(workers_ticks)
        SHARE[$workers,$mode,$scenario]+="$(python3 -c "print(f'{$((p1 - p0)) / max(1, $((w1 - w0)) / $workers):.2f}')") "
        echo "workers $workers round $round $mode $scenario: ${RPS[$workers,$mode,$scenario]} req/s, primary $((p1 - p0)) ticks, workers $((w1 - w0)) ticks" >&2
      done
      stop_herd
    done
    for mode in "${MODES[@]}"; do
      for scenario in "${SCENARIOS[@]}"; do
        RATIO[$workers,$mode,$scenario]+="$(ratio "${RPS[$workers,$mode,$scenario]}" "${RPS[$workers,shared,$scenario]}") "
      done
    done
  done
done

{
  echo "\`wrk -t2 -c$CONNS -d${DURATION}s\` on \`/healthz\`, $ROUNDS rounds, $(nproc) CPUs, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
  echo "| workers | scenario | mode | × shared, median | rounds | primary CPU ÷ avg worker CPU, median | rounds |"
  echo "|---:|---|---|---:|---|---:|---|"
  for workers in "${COUNTS[@]}"; do
    for scenario in "${SCENARIOS[@]}"; do
      for mode in "${MODES[@]}"; do
        # shellcheck disable=SC2086
        echo "| $workers | $scenario | $mode | $(MEDIAN_DIGITS=2 median ${RATIO[$workers,$mode,$scenario]}) | ${RATIO[$workers,$mode,$scenario]}| $(MEDIAN_DIGITS=2 median ${SHARE[$workers,$mode,$scenario]}) | ${SHARE[$workers,$mode,$scenario]}|"
      done
    done
  done
} | tee "$OUT"
