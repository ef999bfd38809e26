# Shared helpers for the benchmark scripts (sourced, not run).
# Everything binds to 127.0.0.1 and is killed on exit.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# HERD=/path/to/herd runs another build (then nothing is built: BUILD=0 is implied).
HERD="${HERD:-$ROOT/target/release/herd}"
[ "$HERD" = "$ROOT/target/release/herd" ] || BUILD=0
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "bench: $1 is required (apt-get install -y $2)" >&2; exit 1; }; }
need wrk wrk
need redis-server redis-server
need python3 python3

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

build_release() { [ "${BUILD:-1}" = 0 ] || (cd "$ROOT" && cargo build --release -p herd --quiet); }

# alternate <round> <items...> → the items, reversed in even rounds (so that neither end of
# the order always runs first, when the machine is freshest)
alternate() {
  local round=$1; shift
  if [ $((round % 2)) = 0 ]; then local r=(); for ((i = $#; i >= 1; i--)); do r+=("${!i}"); done; set -- "${r[@]}"; fi
  echo "$@"
}

# mode_args <mode> → sets MODE_ARGS, herd's flags for a bench mode: a --balance value, with
# :STEERING for --steering (`round-robin:primary`); without it, herd's default (kernel)
mode_args() {
  MODE_ARGS=(--balance "${1%%:*}")
  if [[ $1 == *:* ]]; then MODE_ARGS+=(--steering "${1##*:}"); fi
}

# start_redis → sets REDIS_PORT, REDIS_PID
start_redis() {
  REDIS_PORT=$(free_port)
  REDIS_DIR=$(mktemp -d)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" >/dev/null &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis did not start" >&2; exit 1
}

# start_herd <workers> <extra args...> → sets HERD_PID, HERD_PORT
start_herd() {
  local workers=$1; shift
  HERD_PORT=$(free_port)
  HERD_LOG=$(mktemp)
  "$HERD" serve --workers "$workers" --bind "127.0.0.1:$HERD_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --demo-user alice:wonderland --secure-cookies false "$@" \
    2>"$HERD_LOG" &
  HERD_PID=$!
  PIDS+=("$HERD_PID")
  for _ in $(seq 600); do
    grep -q "workers ready" "$HERD_LOG" && return
    sleep 0.05
  done
  echo "herd did not become ready; log:" >&2; cat "$HERD_LOG" >&2; exit 1
}

stop_herd() { kill -TERM "$HERD_PID" 2>/dev/null || true; wait "$HERD_PID" 2>/dev/null || true; }

# cpu_ticks <pid> → utime+stime in clock ticks
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# worker_pids <primary pid>
worker_pids() { pgrep -P "$1" | tr '\n' ' '; }
# workers_ticks → utime+stime of every worker of $HERD_PID, in clock ticks
workers_ticks() { local t=0 w; for w in $(worker_pids "$HERD_PID"); do t=$((t + $(cpu_ticks "$w"))); done; echo "$t"; }

# login <base url> → the session cookie (name=value) of the demo user
login() {
  curl -s -i -H 'Content-Type: application/json' -d '{"username":"alice","password":"wonderland"}' "$1/login" \
    | awk -F'[ ;]' 'tolower($1)=="set-cookie:" {print $2}'
}

# wrk_cpu <url> <extra wrk args...> → "<requests/s> <worker µs> <redis µs>": one wrk run, and the
# CPU time (utime+stime) the workers of $HERD_PID and $REDIS_PID spent per request during it
wrk_cpu() {
  local url=$1; shift
  local w0 r0 out requests rps
  w0=$(workers_ticks); r0=$(cpu_ticks "$REDIS_PID")
  out=$(wrk -t2 -c"${CONNS:-32}" -d"${DURATION:-8}s" "$@" "$url")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  python3 -c "
hz, n = $(getconf CLK_TCK), $requests
print(f'$rps {($(workers_ticks)-$w0)/hz/n*1e6:.1f} {($(cpu_ticks "$REDIS_PID")-$r0)/hz/n*1e6:.1f}')"
}

# wrk_rps <url> <extra wrk args...> → requests/s (under $WRK_PRELOAD, when set)
wrk_rps() {
  local url=$1; shift
  env ${WRK_PRELOAD:+LD_PRELOAD="$WRK_PRELOAD"} wrk -t2 -c"${CONNS:-32}" -d"${DURATION:-8}s" "$@" "$url" | awk '/Requests\/sec/ {print $2}'
}

# ratio <a> <b> → a ÷ b, two decimals
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# median <numbers...> → their median, one decimal (MEDIAN_DIGITS=2 for ratios)
median() { python3 -c "import statistics, sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.${MEDIAN_DIGITS:-1}f}')" "$@"; }

# get_many <port> <cookie> <path> <n> [text]: n GETs one after another on one keep-alive
# connection; each must answer 200 (and hold text, if given)
get_many() {
  python3 - "$@" <<'PY'
import http.client, sys
port, cookie, path, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
must = sys.argv[5].encode() if len(sys.argv) > 5 else b""
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    conn.request("GET", path, headers={"Cookie": cookie})
    r = conn.getresponse(); body = r.read()
    assert r.status == 200 and must in body, (path, r.status, body)
PY
}

# at_once <path> <server...>: one wrk per server (PORT[server], COOKIE[server]) in the same
# seconds, wrk -t1 -c$CONNS -d$DURATION each; sets RPS[server]. A server that answered anything
# but 2xx would win by failing fast, so that stops the bench. The caller declares PORT, COOKIE
# and RPS (declare -A).
at_once() {
  local path=$1 server loads=(); shift
  for server in "$@"; do
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Cookie: ${COOKIE[$server]}" ${EXTRA_HEADER:+-H "$EXTRA_HEADER"} \
      "http://127.0.0.1:${PORT[$server]}$path" \
      >"$REDIS_DIR/wrk.$server" &
    loads+=($!)
  done
  wait "${loads[@]}"
  for server in "$@"; do
    RPS[$server]=$(awk '/Requests\/sec/ {print $2}' "$REDIS_DIR/wrk.$server")
    ! grep -q "Non-2xx" "$REDIS_DIR/wrk.$server" || { echo "bench: $server answered non-2xx on $path" >&2; exit 1; }
  done
}

# ratio_table <heading>: the median and the rounds of RATIOS[path] for every path of ROUTES, as
# a markdown table (the caller declares RATIOS and ROUTES).
ratio_table() {
  echo "| route | $1, median | round by round |"
  echo "|---|---:|---|"
  local path
  for path in "${ROUTES[@]}"; do
    # shellcheck disable=SC2086
    echo "| \`GET $path\` | $(MEDIAN_DIGITS=2 median ${RATIOS[$path]}) | ${RATIOS[$path]}|"
  done
}

# mem_kib <pid> → "<rss> <pss> <private>" in KiB, from /proc/<pid>/smaps_rollup (private =
# Private_Clean + Private_Dirty: what the process alone holds)
mem_kib() {
  awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Private_(Clean|Dirty):/ {v+=$2} END {print r+0, p+0, v+0}' "/proc/$1/smaps_rollup"
}

# mem_total_kib <pid...> → the same, summed over the processes
mem_total_kib() {
  local pid r p v tr=0 tp=0 tv=0
  for pid in "$@"; do read -r r p v <<<"$(mem_kib "$pid")"; tr=$((tr + r)); tp=$((tp + p)); tv=$((tv + v)); done
  echo "$tr $tp $tv"
}

# mib <kib> → MiB, one decimal
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
