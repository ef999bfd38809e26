#!/usr/bin/env bash
# User-space instructions a worker executes per request, route by route, for herd's session
# store and the stock tower-sessions-redis-store (`--session-store stock`), counted by
# valgrind's callgrind. Unlike requests/s or CPU time, the count does not depend on what else
# the machine is doing: two runs of the same build agree to within ~0.5 %, so it tells a 3 %
# change from noise, which wrk on a shared 2-core machine cannot.
#
#   bench/instructions_per_request.sh [path...]      # default: /healthz /readyz /me /
#   KEEP=/tmp/cg bench/instructions_per_request.sh /me   # keeps the dumps for callgrind_annotate
#
# One worker under callgrind (the primary runs under it too, unmeasured), one keep-alive
# connection, requests one after another: WARMUP requests, then the counters are zeroed, then
# REQUESTS requests are counted. Kernel time (syscalls, wake-ups) is not in the count; it is
# the same for both stores (one round trip each). Writes bench/results/instructions.md.
source "$(dirname "$0")/lib.sh"
need valgrind valgrind
need callgrind_control valgrind
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-300}
PATHS=("$@"); [ ${#PATHS[@]} -gt 0 ] || PATHS=(/healthz /readyz /me /)
build_release
start_redis
OUT="$ROOT/bench/results/instructions.md"
CG_DIR=$(mktemp -d)

# count <store> <path> → instructions per request of the worker
count() {
  local store=$1 path=$2 port log pid worker cookie file total
  port=$(free_port); log=$(mktemp)
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$CG_DIR/callgrind.%p" -q \
    "$HERD" serve --workers 1 --bind "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --demo-user alice:wonderland --secure-cookies false --session-store "$store" \
    --ready-timeout 120s --worker-timeout 120s 2>"$log" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1200); do grep -q "workers ready" "$log" && break; sleep 0.1; done
  grep -q "workers ready" "$log" || { echo "herd under valgrind did not become ready:" >&2; cat "$log" >&2; exit 1; }
  worker=$(pgrep -P "$pid" | head -1)
  cookie=$(login "http://127.0.0.1:$port")
  get_many "$port" "$cookie" "$path" "$WARMUP"
  callgrind_control -z "$worker" >/dev/null
  get_many "$port" "$cookie" "$path" "$REQUESTS"
  callgrind_control -d "$worker" >/dev/null
  # The dump is written asynchronously, by the worker's next scheduling of valgrind's thread.
  for _ in $(seq 100); do file=$(ls "$CG_DIR/callgrind.$worker".* 2>/dev/null | head -1); [ -n "$file" ] && break; sleep 0.1; done
  [ -n "$file" ] || { echo "no callgrind dump from worker $worker" >&2; exit 1; }
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
  kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$file" "$KEEP/callgrind.$store${path//\//_}"; fi
  rm -f "$CG_DIR"/callgrind.*
  echo $((total / REQUESTS))
}

declare -A INSN
for path in "${PATHS[@]}"; do
  for store in herd stock; do
    INSN[$store,$path]=$(count "$store" "$path")
    echo "$store $path: ${INSN[$store,$path]} instructions per request" >&2
  done
done

{
  echo "| route | herd store | stock store | herd ÷ stock |"
  echo "|---|---:|---:|---:|"
  for path in "${PATHS[@]}"; do
    echo "| \`GET $path\` | ${INSN[herd,$path]} | ${INSN[stock,$path]} | $(ratio "${INSN[herd,$path]}" "${INSN[stock,$path]}") |"
  done
  echo
  echo "(user-space instructions per request in the worker, callgrind; $REQUESTS sequential requests after $WARMUP, one worker, one keep-alive connection, logged in)"
} | tee "$OUT"
