#!/usr/bin/env bash
# Session store throughput and Redis cost, herd's store next to the stock
# tower-sessions-redis-store 0.16 (`--session-store stock`), in one run:
#   - wrk on /healthz (no session, no Redis), /readyz (one Redis PING through the same pool, no
#     session: the floor of any route that makes one round trip), GET /me (read-only session)
#     and / (logged in: the visit counter is a write per request), keep-alive;
#   - the workers' CPU time per GET /me (utime+stime over the wrk run ÷ requests);
#   - Redis commands per GET /me from INFO commandstats around a fixed number of requests, and
#     the idle-timeout touches (the PEXPIRE inside the touch script) during them.
#
# The stores take turns, ROUNDS times (herd, stock, herd, stock, …), and every figure is the
# median of its rounds: on a shared machine a noisy stretch then hits both stores instead of
# deciding the comparison.
#
#   bench/sessions.sh            # ROUNDS=3 DURATION=6 CONNS=32 WORKERS=2 by default
#
# Writes bench/results/sessions.md and prints it.
source "$(dirname "$0")/lib.sh"
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-6}
ME_REQUESTS=${ME_REQUESTS:-20000}
# The touch window is a quarter of the idle timeout: 5 s here, so a run shows a few touches.
IDLE=${IDLE:-20s}
build_release
start_redis
OUT="$ROOT/bench/results/sessions.md"

# calls <command> → cumulative calls of that command in INFO commandstats
calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' -v c="cmdstat_$1" '$1==c {print $3}' | grep . || echo 0; }

declare -A RUNS PER_REQ TOUCHES
for round in $(seq "$ROUNDS"); do
  for store in herd stock; do
    start_herd "$WORKERS" --session-store "$store" --session-idle "$IDLE"
    base="http://127.0.0.1:$HERD_PORT"
    cookie=$(login "$base")
    healthz=$(wrk_rps "$base/healthz")
    readyz=$(wrk_rps "$base/readyz")
    read -r me me_cpu _ <<<"$(wrk_cpu "$base/me" -H "Cookie: $cookie")"
    home=$(wrk_rps "$base/" -H "Cookie: $cookie")
    for figure in healthz readyz me me_cpu home; do RUNS[$store,$figure]+="${!figure} "; done
    echo "round $round $store: healthz $healthz readyz $readyz me $me ($me_cpu µs) home $home" >&2

    if [ "$round" = 1 ]; then
      # Commands per GET /me: a fixed number of requests on a quiet server.
      redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
      started=$(date +%s.%N)
      get_many "$HERD_PORT" "$cookie" /me "$ME_REQUESTS" alice
      elapsed=$(python3 -c "import time; print(round(time.time() - $started, 1))")
      total=$(redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_/ && $1!="cmdstat_config" && $1!="cmdstat_info" {s+=$3} END {print s+0}')
      # Both stores read with GET; herd's touches are EVALSHA.
      sent=$(( $(calls get) + $(calls evalsha) ))
      PER_REQ[$store]=$(python3 -c "print(f'{$sent/$ME_REQUESTS:.3f} sent ({$total/$ME_REQUESTS:.2f} executed incl. script steps)')")
      TOUCHES[$store]="$(calls pexpire) in ${elapsed}s"
    fi
    stop_herd
  done
done

declare -A MED
for store in herd stock; do
  for figure in healthz readyz me me_cpu home; do
    # shellcheck disable=SC2086
    MED[$store,$figure]=$(median ${RUNS[$store,$figure]})
  done
done
# ratios <figure>: herd ÷ stock of each round, as "a, b, c"
ratios() {
  python3 -c "import sys; h, s = sys.argv[1].split(), sys.argv[2].split(); print(', '.join(f'{float(a)/float(b):.2f}' for a, b in zip(h, s)))" \
    "${RUNS[herd,$1]}" "${RUNS[stock,$1]}"
}
{
  echo "| store | /healthz req/s | /readyz req/s | GET /me req/s | / (logged in) req/s | /readyz ÷ /healthz | /me ÷ /healthz | worker CPU per /me | Redis commands per /me | touches (PEXPIRE) during $ME_REQUESTS /me |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for store in herd stock; do
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %s | %s | %.1f µs | %s | %s |\n' "$store" \
      "${MED[$store,healthz]}" "${MED[$store,readyz]}" "${MED[$store,me]}" "${MED[$store,home]}" \
      "$(ratio "${MED[$store,readyz]}" "${MED[$store,healthz]}")" "$(ratio "${MED[$store,me]}" "${MED[$store,healthz]}")" \
      "${MED[$store,me_cpu]}" "${PER_REQ[$store]}" "${TOUCHES[$store]}"
  done
  echo
  echo "herd ÷ stock, medians: GET /me $(ratio "${MED[herd,me]}" "${MED[stock,me]}"), / $(ratio "${MED[herd,home]}" "${MED[stock,home]}"), worker CPU per /me $(ratio "${MED[herd,me_cpu]}" "${MED[stock,me_cpu]}")"
  echo "herd ÷ stock, round by round: GET /me $(ratios me); / $(ratios home)"
  echo
  echo "(medians of $ROUNDS rounds, stores taking turns; workers=$WORKERS, wrk -t2 -c${CONNS:-32} -d${DURATION}s, --session-idle $IDLE, $(nproc) cores)"
} | tee "$OUT"
