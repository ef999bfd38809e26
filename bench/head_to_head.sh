#!/usr/bin/env bash
# herd's session store against the stock tower-sessions-redis-store 0.16, both at once: two
# herd servers (one per store, WORKERS workers each, one shared Redis), each under its own wrk,
# in the same seconds. On a shared machine a noisy stretch then slows both alike, so the ratio
# of their requests/s is far steadier than that of runs taken one after another: with every
# process runnable the kernel shares the cores evenly, and each server turns its share into
# requests at its own cost per request. Rounds alternate which server starts first.
#
#   bench/head_to_head.sh            # ROUNDS=5 DURATION=8 CONNS=16 WORKERS=1 PATHS="/me /"
#
# Writes bench/results/head_to_head.md and prints it.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
read -r -a ROUTES <<<"${PATHS:-/me /}"
build_release
start_redis
OUT="$ROOT/bench/results/head_to_head.md"

declare -A PORT PRIMARY COOKIE RATIOS RPS
for round in $(seq "$ROUNDS"); do
  read -r -a order <<<"$(alternate "$round" herd stock)"
  for store in "${order[@]}"; do
    start_herd "$WORKERS" --session-store "$store"
    PORT[$store]=$HERD_PORT; PRIMARY[$store]=$HERD_PID
    COOKIE[$store]=$(login "http://127.0.0.1:$HERD_PORT")
  done
  for path in "${ROUTES[@]}"; do
    at_once "$path" "${order[@]}"
    RATIOS[$path]+="$(ratio "${RPS[herd]}" "${RPS[stock]}") "
    echo "round $round $path: herd ${RPS[herd]} stock ${RPS[stock]} req/s" >&2
  done
  for store in herd stock; do HERD_PID=${PRIMARY[$store]} stop_herd; done
done

{
  ratio_table "herd ÷ stock"
  echo
  echo "(both servers at once, $ROUNDS rounds; workers=$WORKERS each, wrk -t1 -c$CONNS -d${DURATION}s each, logged in, $(nproc) cores)"
} | tee "$OUT"
