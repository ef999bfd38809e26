#!/usr/bin/env bash
# Dispatch modes side by side, in one run: wrk against /healthz (no Redis) and / with a
# logged-in session, with keep-alive and with a new connection per request; plus the primary's
# CPU time next to the average worker's while under load.
#
#   bench/dispatch.sh            # DURATION=8 CONNS=32 WORKERS=4 by default
#
# Writes bench/results/dispatch.md (a markdown table) and prints it.
source "$(dirname "$0")/lib.sh"
WORKERS=${WORKERS:-4}
build_release
start_redis
OUT="$ROOT/bench/results/dispatch.md"

declare -A RPS PRIMARY_CPU WORKER_CPU
read -r -a MODES <<<"${MODES:-shared round-robin least-conn ip-hash}"
read -r -a SCENARIOS <<<"${SCENARIOS:-healthz-keepalive healthz-close home-keepalive home-close}"
for mode in "${MODES[@]}"; do
  start_herd "$WORKERS" --balance "$mode"
  base="http://127.0.0.1:$HERD_PORT"
  cookie=$(login "$base")
  for scenario in "${SCENARIOS[@]}"; do
    case $scenario in
      healthz-*) url="$base/healthz"; hdr=() ;;
      home-*) url="$base/"; hdr=(-H "Cookie: $cookie") ;;
    esac
    [[ $scenario == *close ]] && hdr+=(-H "Connection: close")
    p0=$(cpu_ticks "$HERD_PID"); w0=$(workers_ticks)
    RPS[$mode,$scenario]=$(wrk_rps "$url" "${hdr[@]}")
    p1=$(cpu_ticks "$HERD_PID"); w1=$(workers_ticks)
    PRIMARY_CPU[$mode,$scenario]=$((p1 - p0))
    WORKER_CPU[$mode,$scenario]=$(( (w1 - w0) / WORKERS ))
    echo "$mode $scenario: ${RPS[$mode,$scenario]} req/s (primary ${PRIMARY_CPU[$mode,$scenario]} ticks, avg worker ${WORKER_CPU[$mode,$scenario]} ticks)" >&2
  done
  stop_herd
done

{
  echo "Workers: $WORKERS, wrk -t2 -c${CONNS:-32} -d${DURATION:-8}s, $(nproc) CPUs, $(date -u +%Y-%m-%d)."
  echo
  echo "| scenario | mode | req/s | × shared | primary CPU / avg worker CPU |"
  echo "|---|---|---:|---:|---:|"
  for scenario in "${SCENARIOS[@]}"; do
    for mode in "${MODES[@]}"; do
      python3 - "$scenario" "$mode" "${RPS[$mode,$scenario]}" "${RPS[shared,$scenario]}" \
        "${PRIMARY_CPU[$mode,$scenario]}" "${WORKER_CPU[$mode,$scenario]}" <<'PY'
import sys
scenario, mode, rps, base, p, w = sys.argv[1:]
ratio = float(rps) / float(base) if float(base) else 0
share = f"{int(p) / int(w):.2f}" if int(w) else "n/a"
print(f"| {scenario} | {mode} | {float(rps):,.0f} | {ratio:.2f} | {share} |")
PY
    done
  done
} | tee "$OUT"
