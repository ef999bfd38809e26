#!/usr/bin/env bash
# Redis connections per worker (`--redis-pool-size`): requests/s and worker + Redis CPU per
# request of /readyz (one PING) and GET /me (one session read) for each size, the sizes taking
# turns over ROUNDS rounds; prints the medians.
#
#   bench/redis_pool.sh            # SIZES="1 4" ROUNDS=3 DURATION=5 CONNS=32 WORKERS=2
#
# Writes bench/results/redis_pool.md and prints it.
source "$(dirname "$0")/lib.sh"
read -r -a SIZES <<<"${SIZES:-1 4}"
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-5}
build_release
start_redis
OUT="$ROOT/bench/results/redis_pool.md"

declare -A RUNS
for round in $(seq "$ROUNDS"); do
  for size in "${SIZES[@]}"; do
    start_herd "${WORKERS:-2}" --redis-pool-size "$size"
    base="http://127.0.0.1:$HERD_PORT"
    cookie=$(login "$base")
    for path in /readyz /me; do
      read -r rps worker_us redis_us <<<"$(wrk_cpu "$base$path" -H "Cookie: $cookie")"
      RUNS[$size,$path,rps]+="$rps "; RUNS[$size,$path,worker]+="$worker_us "; RUNS[$size,$path,redis]+="$redis_us "
      echo "round $round size $size $path: $rps req/s, workers $worker_us µs + redis $redis_us µs" >&2
    done
    stop_herd
  done
done

{
  echo "| connections per worker | route | req/s | worker CPU per request | Redis CPU per request |"
  echo "|---:|---|---:|---:|---:|"
  for size in "${SIZES[@]}"; do
    for path in /readyz /me; do
      # shellcheck disable=SC2086
      echo "| $size | \`GET $path\` | $(median ${RUNS[$size,$path,rps]}) | $(median ${RUNS[$size,$path,worker]}) µs | $(median ${RUNS[$size,$path,redis]}) µs |"
    done
  done
  echo
  echo "(medians of $ROUNDS rounds, sizes taking turns; workers=${WORKERS:-2}, wrk -t2 -c${CONNS:-32} -d${DURATION}s, $(nproc) cores)"
} | tee "$OUT"
