#!/usr/bin/env bash
# This tree's herd against the herd of an older commit, both at once: two servers (WORKERS
# workers each, one shared Redis), each under its own wrk in the same seconds, rounds
# alternating which starts first (see head_to_head.sh for why at once beats taking turns).
# For a change to the serving path itself, such as replacing axum::serve.
#
#   bench/versions.sh REV            # ROUNDS=5 DURATION=8 CONNS=16 WORKERS=1 PATHS="/healthz /me /"
#   EXTRA_HEADER="Connection: close" bench/versions.sh REV   # a new connection per request: the
#                                    # primary's accept, dispatch and hand-off path
#
# REV is built in a temporary git worktree into target/bench-base (kept, so the next run only
# rebuilds what changed). Writes bench/results/versions.md and prints it.
source "$(dirname "$0")/lib.sh"
BASE=${1:?usage: bench/versions.sh REV}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
WORKERS=${WORKERS:-1}
read -r -a ROUTES <<<"${PATHS:-/healthz /me /}"
OUT="$ROOT/bench/results/versions.md"

SRC=$(mktemp -d)/src
git -C "$ROOT" worktree add --quiet --detach "$SRC" "$BASE"
trap 'cleanup; git -C "$ROOT" worktree remove --force "$SRC"' EXIT
build_release
(cd "$SRC" && CARGO_TARGET_DIR="$ROOT/target/bench-base" cargo build --release -p herd --quiet)
declare -A BIN=([new]="$HERD" [old]="$ROOT/target/bench-base/release/herd")
start_redis

declare -A PORT PRIMARY COOKIE RATIOS RPS
for round in $(seq "$ROUNDS"); do
  read -r -a order <<<"$(alternate "$round" new old)"
  for version in "${order[@]}"; do
    HERD=${BIN[$version]} start_herd "$WORKERS"
    PORT[$version]=$HERD_PORT; PRIMARY[$version]=$HERD_PID
    COOKIE[$version]=$(login "http://127.0.0.1:$HERD_PORT")
  done
  for path in "${ROUTES[@]}"; do
    at_once "$path" "${order[@]}"
    RATIOS[$path]+="$(ratio "${RPS[new]}" "${RPS[old]}") "
    echo "round $round $path: new ${RPS[new]} old ${RPS[old]} req/s" >&2
  done
  for version in new old; do HERD_PID=${PRIMARY[$version]} stop_herd; done
done

{
  ratio_table "this tree ÷ $BASE"
  echo
  echo "(both servers at once, $ROUNDS rounds; workers=$WORKERS each, wrk -t1 -c$CONNS -d${DURATION}s each, logged in, $(nproc) cores)"
} | tee "$OUT"
