#!/usr/bin/env bash
# One serve flag at several values: requests/s and worker + Redis CPU per request of each path,
# logged in, the values taking turns over ROUNDS rounds (so a noisy stretch of this shared
# machine hits every value, not one); prints the medians and each path's req/s ÷ the first's.
#
#   bench/flag.sh --threads 1 2                  # runtime threads per worker
#   bench/flag.sh --redis-pool-size 1 4          # Redis connections per worker
#   PATHS="/readyz /me" ROUNDS=5 bench/flag.sh …  # defaults: PATHS="/healthz /readyz /me /"
#                                                #   ROUNDS=3 DURATION=5 CONNS=32 WORKERS=2
#
# Writes bench/results/flag-<flag>.md and prints it.
source "$(dirname "$0")/lib.sh"
FLAG=${1:?usage: bench/flag.sh --flag VALUE VALUE...}; shift
VALUES=("$@")
[ ${#VALUES[@]} -ge 2 ] || { echo "bench: give at least two values of $FLAG" >&2; exit 2; }
read -r -a ROUTES <<<"${PATHS:-/healthz /readyz /me /}"
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-5}
build_release
start_redis
OUT="$ROOT/bench/results/flag-${FLAG#--}.md"

declare -A RUNS
for round in $(seq "$ROUNDS"); do
  for value in "${VALUES[@]}"; do
    start_herd "${WORKERS:-2}" "$FLAG" "$value"
    base="http://127.0.0.1:$HERD_PORT"
    cookie=$(login "$base")
    for path in "${ROUTES[@]}"; do
      read -r rps worker_us redis_us <<<"$(wrk_cpu "$base$path" -H "Cookie: $cookie")"
      RUNS[$value,$path,rps]+="$rps "; RUNS[$value,$path,worker]+="$worker_us "; RUNS[$value,$path,redis]+="$redis_us "
      echo "round $round $FLAG $value $path: $rps req/s, workers $worker_us µs + redis $redis_us µs" >&2
    done
    stop_herd
  done
done

{
  echo "| \`$FLAG\` | route | req/s | ÷ \`GET ${ROUTES[0]}\` | worker CPU per request | Redis CPU per request |"
  echo "|---:|---|---:|---:|---:|---:|"
  for value in "${VALUES[@]}"; do
    # shellcheck disable=SC2086
    first=$(median ${RUNS[$value,${ROUTES[0]},rps]})
    for path in "${ROUTES[@]}"; do
      # shellcheck disable=SC2086
      rps=$(median ${RUNS[$value,$path,rps]})
      # shellcheck disable=SC2086
      echo "| $value | \`GET $path\` | $rps | $(ratio "$rps" "$first") | $(median ${RUNS[$value,$path,worker]}) µs | $(median ${RUNS[$value,$path,redis]}) µs |"
    done
  done
  echo
  echo "(medians of $ROUNDS rounds, values taking turns; workers=${WORKERS:-2}, wrk -t2 -c${CONNS:-32} -d${DURATION}s, $(nproc) cores)"
} | tee "$OUT"
