#!/usr/bin/env bash
# What a scrape costs: req/s of `GET /` with 4 workers while something scrapes the primary's
# /metrics every second, against no scraping, in alternating rounds (so drift in the machine
# hits both alike); and the latency and CPU of `GET /metrics` itself on an idle cluster.
#
#   bench/metrics_overhead.sh      # ROUNDS=5 DURATION=8 CONNS=32 WORKERS=4 SCRAPES=200 by default
#
# Writes bench/results/metrics.md (markdown) and prints it.
source "$(dirname "$0")/lib.sh"
need curl curl
WORKERS=${WORKERS:-4}
ROUNDS=${ROUNDS:-5}
SCRAPES=${SCRAPES:-200}
build_release
start_redis
METRICS_PORT=$(free_port)
start_herd "$WORKERS" --metrics-bind "127.0.0.1:$METRICS_PORT"
base="http://127.0.0.1:$HERD_PORT"
metrics="http://127.0.0.1:$METRICS_PORT/metrics"
OUT="$ROOT/bench/results/metrics.md"

# The idle cost of one scrape: wall time (curl, new connection each), and the CPU the primary
# and all workers spent per scrape.
p0=$(cpu_ticks "$HERD_PID"); w0=$(workers_ticks)
times=()
for _ in $(seq "$SCRAPES"); do
  times+=("$(curl -s -o /dev/null -w '%{time_total}' "$metrics")")
done
p1=$(cpu_ticks "$HERD_PID"); w1=$(workers_ticks)
bytes=$(curl -s "$metrics" | wc -c)
series=$(curl -s "$metrics" | grep -vc '^#')
read -r median p90 p99 < <(python3 -c "
import statistics, sys
t = sorted(float(x) * 1000 for x in sys.argv[1:])
q = lambda p: t[min(len(t) - 1, int(p * len(t)))]
print(f'{statistics.median(t):.2f} {q(0.9):.2f} {q(0.99):.2f}')" "${times[@]}")
hz=$(getconf CLK_TCK)
cpu_primary=$(python3 -c "print(f'{($p1-$p0)/$hz/$SCRAPES*1e3:.2f}')")
cpu_workers=$(python3 -c "print(f'{($w1-$w0)/$hz/$SCRAPES*1e3:.2f}')")

# Load with and without a scraper, alternating.
scraper() { while :; do curl -s -o /dev/null "$metrics"; sleep 1; done; }
with=(); without=(); ratios=()
for round in $(seq "$ROUNDS"); do
  plain=$(wrk_rps "$base/")
  scraper & SCRAPER=$!
  PIDS+=("$SCRAPER")
  scraped=$(wrk_rps "$base/")
  kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true
  without+=("$plain"); with+=("$scraped")
  ratios+=("$(python3 -c "print(f'{$scraped/$plain:.3f}')")")
  echo "round $round: no scraping $plain req/s, scraping every second $scraped req/s" >&2
done
stop_herd

{
  echo "Workers: $WORKERS, wrk -t2 -c${CONNS:-32} -d${DURATION:-8}s on \`GET /\` (anonymous), $ROUNDS alternating rounds, $(nproc) CPUs, $(date -u +%Y-%m-%d)."
  echo
  echo "| | median | round by round |"
  echo "|---|---:|---|"
  echo "| req/s, no scraping | $(median "${without[@]}") | ${without[*]} |"
  echo "| req/s, scraping /metrics every second | $(median "${with[@]}") | ${with[*]} |"
  echo "| ratio (scraping ÷ none) | $(MEDIAN_DIGITS=3 median "${ratios[@]}") | ${ratios[*]} |"
  echo
  echo "\`GET /metrics\` on the idle cluster, $SCRAPES scrapes one after another (new connection each; $series samples, $bytes bytes):"
  echo
  echo "| latency median | p90 | p99 | primary CPU per scrape | all workers' CPU per scrape |"
  echo "|---:|---:|---:|---:|---:|"
  echo "| $median ms | $p90 ms | $p99 ms | $cpu_primary ms | $cpu_workers ms |"
} | tee "$OUT"
