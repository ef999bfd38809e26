#!/usr/bin/env bash
# Session store throughput and Redis cost, herd's store next to the stock
# tower-sessions-redis-store 0.16 (`--session-store stock`), in one run:
#   - wrk on /healthz (no session, no Redis), /readyz (one Redis PING through the same pool, no
#     session: the floor of any route that makes one round trip), GET /me (read-only session)
#     and / (logged in: the visit counter is a write per request), keep-alive;
#   - the workers' CPU time per GET /me (utime+stime over the wrk run ÷ requests), which the
#     machine's noise moves far less than requests/s;
#   - Redis commands per GET /me from INFO commandstats before/after a fixed number of
#     requests, and the idle-timeout touches (PEXPIRE inside the load script) during it.
#
#   bench/sessions.sh            # DURATION=8 CONNS=32 WORKERS=2 by default
#
# Writes bench/results/sessions.md and prints it.
source "$(dirname "$0")/lib.sh"
WORKERS=${WORKERS:-2}
ME_REQUESTS=${ME_REQUESTS:-20000}
# The touch window is a quarter of the idle timeout: 5 s here, so a run shows a few touches.
IDLE=${IDLE:-20s}
build_release
start_redis
OUT="$ROOT/bench/results/sessions.md"

# calls <command> → cumulative calls of that command in INFO commandstats
calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' -v c="cmdstat_$1" '$1==c {print $3}' | grep . || echo 0; }

declare -A RPS PER_REQ TOUCHES CPU
for store in herd stock; do
  start_herd "$WORKERS" --session-store "$store" --session-idle "$IDLE"
  base="http://127.0.0.1:$HERD_PORT"
  cookie=$(login "$base")
  RPS[$store,healthz]=$(wrk_rps "$base/healthz")
  RPS[$store,readyz]=$(wrk_rps "$base/readyz")
  read -r me_rps me_cpu _ <<<"$(wrk_cpu "$base/me" -H "Cookie: $cookie")"
  RPS[$store,me]=$me_rps
  CPU[$store]=$me_cpu
  RPS[$store,home]=$(wrk_rps "$base/" -H "Cookie: $cookie")

  # Commands per GET /me: a fixed number of requests on a quiet server.
  redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
  started=$(date +%s.%N)
  python3 - "$HERD_PORT" "$cookie" "$ME_REQUESTS" <<'PY'
import http.client, sys
port, cookie, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", "/me", headers={"Cookie": cookie})
    r = conn.getresponse(); body = r.read()
    assert r.status == 200 and b"alice" in body, (r.status, body)
PY
  elapsed=$(python3 -c "import time; print(round(time.time() - $started, 1))")
  total=$(redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_/ && $1!="cmdstat_config" && $1!="cmdstat_info" {s+=$3} END {print s+0}')
  case $store in
    herd) sent=$(( $(calls hgetall) + $(calls evalsha) )) ;;
    stock) sent=$(calls get) ;;
  esac
  PER_REQ[$store]=$(python3 -c "print(f'{$sent/$ME_REQUESTS:.3f} sent ({$total/$ME_REQUESTS:.2f} executed incl. script steps)')")
  TOUCHES[$store]="$(calls pexpire) in ${elapsed}s"
  echo "$store: healthz ${RPS[$store,healthz]} readyz ${RPS[$store,readyz]} me ${RPS[$store,me]} home ${RPS[$store,home]} req/s; per /me: ${PER_REQ[$store]}; touches ${TOUCHES[$store]}" >&2
  stop_herd
done

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
{
  echo "| store | /healthz req/s | /readyz req/s | GET /me req/s | / (logged in) req/s | /readyz ÷ /healthz | /me ÷ /healthz | worker CPU per /me | Redis commands per /me | touches (PEXPIRE) during $ME_REQUESTS /me |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for store in herd stock; do
    echo "| $store | ${RPS[$store,healthz]} | ${RPS[$store,readyz]} | ${RPS[$store,me]} | ${RPS[$store,home]} | $(ratio "${RPS[$store,readyz]}" "${RPS[$store,healthz]}") | $(ratio "${RPS[$store,me]}" "${RPS[$store,healthz]}") | ${CPU[$store]} µs | ${PER_REQ[$store]} | ${TOUCHES[$store]} |"
  done
  echo
  echo "herd ÷ stock: GET /me $(ratio "${RPS[herd,me]}" "${RPS[stock,me]}"), / $(ratio "${RPS[herd,home]}" "${RPS[stock,home]}")"
  echo
  echo "(workers=$WORKERS, wrk -t2 -c${CONNS:-32} -d${DURATION:-8}s, --session-idle $IDLE, $(nproc) cores)"
} | tee "$OUT"
