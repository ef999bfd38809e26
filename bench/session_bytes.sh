#!/usr/bin/env bash
# Redis memory per logged-in session (issue 19): INFO memory's used_memory before and after
# SESSIONS logins through the real herd binary, ÷ SESSIONS: the record, the visit counter and
# the entry in the user's login index, everything a login leaves in Redis. Then the app's side
# keys (counter, index) are deleted and the rest is the record alone. herd's store and the stock
# tower-sessions-redis-store 0.16 (`--session-store stock`: same app, same counter and index) in
# the same run, for every user count of USERS_LIST (SESSIONS spread evenly over that many
# users: 1 is one user with many devices, SESSIONS is one session per user).
#
# The users are written straight into Redis with a cheap argon2id hash (m = 8 KiB, t = 1), so
# 10,000 logins take seconds, not the minutes 19 MiB hashes would; verification reads the cost
# from the stored hash, so the login path is otherwise the real one. The login limits' window is
# 1 s, and the figure is taken once Redis has expired every counter, so they do not count.
#
#   bench/session_bytes.sh     # SESSIONS=10000 USERS_LIST="1 10000"; BEFORE=/path/to/old/herd
#
# Writes bench/results/session_bytes.md and prints it.
source "$(dirname "$0")/lib.sh"
need argon2 argon2
SESSIONS=${SESSIONS:-10000}
USERS_LIST=${USERS_LIST:-1 10000}
build_release
OUT="$ROOT/bench/results/session_bytes.md"
PHC=$(printf pw | argon2 saltsaltsaltsalt -id -t 1 -m 3 -p 1 -e)

used() { redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
# until_gone <pattern>: polls (30 s at most) until no key matches
until_gone() {
  for _ in $(seq 300); do
    [ -z "$(redis-cli -p "$REDIS_PORT" --scan --pattern "$1" | head -1)" ] && return
    sleep 0.1
  done
  echo "bench: keys $1 did not expire" >&2; exit 1
}
# del_matching <pattern>: deletes every key that matches
del_matching() { redis-cli -p "$REDIS_PORT" --scan --pattern "$1" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null; }

# measure <label> <binary> <store> <users>: a table row
measure() {
  local label=$1 binary=$2 store=$3 users=$4 m0 m1 m2 keys
  start_redis
  for i in $(seq 0 $((users - 1))) warm; do echo "HSET herd:user:u$i password $PHC"; done \
    | redis-cli -p "$REDIS_PORT" >/dev/null
  HERD=$binary start_herd 2 --session-store "$store" --login-limit-window 1s \
    --login-limit-per-address 1000000 --login-limit-per-user 1000000 --login-limit-per-user-address 1000000
  # One login first, so the scripts and connections are loaded before the baseline.
  curl -sf -H 'Content-Type: application/json' -d '{"username":"uwarm","password":"pw"}' \
    "http://127.0.0.1:$HERD_PORT/login" >/dev/null
  until_gone 'herd:ratelimit:*'
  m0=$(used)
  python3 "$ROOT/bench/session_logins.py" "127.0.0.1:$HERD_PORT" "$SESSIONS" "$users" >/dev/null
  until_gone 'herd:ratelimit:*'
  m1=$(used)
  keys=$(redis-cli -p "$REDIS_PORT" dbsize)
  # The login index and visit counts: one hash per user now; before, a set per user and a
  # counter key per session.
  del_matching 'herd:user:*:logins'
  del_matching 'herd:user:*:sessions'
  del_matching 'herd:sess:*:visits'
  m2=$(used)
  stop_herd
  kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  python3 -c "
n = $SESSIONS
print(f'| $label | $store | $users | {($m1-$m0)/n:.0f} | {($m2-$m0)/n:.0f} | {($m1-$m2)/n:.0f} | $keys |')"
}

{
  echo "Redis used_memory per logged-in session, $SESSIONS sessions, Redis $(redis-server --version | awk '{print $3}') ($(date -u +%Y-%m-%d))"
  echo
  echo "| binary | store | users | B / session | record B | counter + index B | keys in Redis |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for users in $USERS_LIST; do
    if [ -n "${BEFORE:-}" ]; then measure "herd (before)" "$BEFORE" herd "$users"; fi
    measure herd "$HERD" herd "$users"
    measure herd "$HERD" stock "$users"
  done
} | tee "$OUT"
