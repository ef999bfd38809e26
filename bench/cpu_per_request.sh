#!/usr/bin/env bash
# Worker and Redis CPU time per request, route by route: the figure to watch when optimising a
# request path, because on a shared, noisy machine it moves far less than requests/s does.
# utime+stime of the workers (and of redis-server) over one wrk run, divided by its requests.
#
#   bench/cpu_per_request.sh [herd|stock] [path...]   # default: herd /healthz /readyz /me /
#
# Prints one line per path. DURATION, CONNS, WORKERS as in the other scripts.
source "$(dirname "$0")/lib.sh"
STORE=${1:-herd}; shift || true
PATHS=("$@"); [ ${#PATHS[@]} -gt 0 ] || PATHS=(/healthz /readyz /me /)
build_release
start_redis
start_herd "${WORKERS:-2}" --session-store "$STORE"
base="http://127.0.0.1:$HERD_PORT"
cookie=$(login "$base")
for path in "${PATHS[@]}"; do
  read -r rps worker_us redis_us <<<"$(wrk_cpu "$base$path" -H "Cookie: $cookie")"
  echo "$STORE $path: $rps req/s, workers $worker_us µs + redis $redis_us µs CPU per request"
done
stop_herd
