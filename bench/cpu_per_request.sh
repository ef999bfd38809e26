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
  w0=$(workers_ticks); r0=$(cpu_ticks "$REDIS_PID")
  out=$(wrk -t2 -c"${CONNS:-32}" -d"${DURATION:-8}s" -H "Cookie: $cookie" "$base$path")
  w1=$(workers_ticks); r1=$(cpu_ticks "$REDIS_PID")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  python3 -c "
hz, n = $(getconf CLK_TCK), $requests
print(f'$STORE $path: {$rps:.0f} req/s, workers {($w1-$w0)/hz/n*1e6:.1f} µs + redis {($r1-$r0)/hz/n*1e6:.1f} µs CPU per request')"
done
stop_herd
