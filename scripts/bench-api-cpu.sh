#!/usr/bin/env bash
# Issue #15's second goal as a benchmark: the command API's CPU time per
# `POST /v1/orders` against an earlier commit's API (by default 06e4a2b,
# the code before issue #15), both release builds, alternating in one run.
#
# Each round starts both APIs, each on a scratch database of its own, and
# warms each up for 2 s at 8 connections. Then, at 1, 8 and 32 wrk
# connections, it measures one and then the other for SECONDS_EACH (default
# 5) each: the earlier commit first in odd rounds and second in even ones, so
# a machine slowing down favours neither, and a pair is seconds apart (this
# machine's speed swings within minutes). It reports the requests per
# second and, per request, the API process's CPU time (user and system,
# from /proc/<pid>/stat) and its threads' voluntary context switches (each
# a sleep and a wake-up). The figures are the medians of ROUNDS (default 3)
# rounds; the ratio is taken within each pair.
#
# A third API runs beside them as a floor: `command-side/api/examples/floor.rs`,
# a bare axum server that writes the same order as one prepared INSERT and
# answers (no authentication, decision, concurrency check, NOTIFY, log line or
# metrics), measured in the same rounds, after the other two. It says what a
# command API written the plain way on axum, sqlx and PostgreSQL costs on the
# machine in that hour, so the ratios to it are the current code's cost over
# that stack's.
#
#   scripts/bench-api-cpu.sh [BASE_COMMIT]   (BENCH_QUICK=1: print only, leave BENCHMARKS.md alone)
#
# The earlier commit is built once, from a worktree of its own, into
# target/base-<commit> (kept for later runs). Needs wrk (Debian: wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(git rev-parse --short "${1:-06e4a2b}")
rounds=${ROUNDS:-3}
seconds=${SECONDS_EACH:-5}
levels=(1 8 32)

# shellcheck source=scripts/lib/command-api.sh
source scripts/lib/command-api.sh
# shellcheck source=scripts/lib/benchmarks.sh
source scripts/lib/benchmarks.sh
# During a round the three APIs run, each on a scratch database of its own:
# their pids, ports, databases and scratch directories, by "base", "now" and "floor".
declare -A pid_of port_of db_of work_of
clean_up() {
  stop_command_api
  stop_all
  remove_worktree
}
trap clean_up EXIT

cargo build --quiet --release -p command-api --bin command-api --example floor -p service-kit --bin mint-token
base_bin=target/base-$base/release/command-api
if [[ ! -x $base_bin ]]; then
  echo "building the command API of $base into target/base-$base (once)" >&2
  in_worktree "$base" env CARGO_TARGET_DIR="$PWD/target/base-$base" \
    cargo build --quiet --release -p command-api --bin command-api
fi

start_all() {
  local which binary
  for which in base now floor; do
    binary=target/release/command-api
    if [[ $which == base ]]; then binary=$base_bin; fi
    if [[ $which == floor ]]; then binary=target/release/examples/floor; fi
    start_command_api "$binary" target/release/mint-token
    pid_of[$which]=$api port_of[$which]=$port db_of[$which]=$db work_of[$which]=$work
    api="" db="" work=""
    wrk -t1 -c8 -d2s -s "${work_of[$which]}/post.lua" "http://127.0.0.1:${port_of[$which]}/v1/orders" >/dev/null
  done
}
stop_all() {
  local which
  for which in "${!pid_of[@]}"; do
    api=${pid_of[$which]} db=${db_of[$which]} work=${work_of[$which]}
    stop_command_api
    unset "pid_of[$which]"
  done
  api="" db="" work=""
}
# Prints "requests/s ms-of-CPU switches", per request, of the API $1 ("base"
# or "now") under wrk at $2 connections.
measure() {
  local pid=${pid_of[$1]} dir=${work_of[$1]} before after switched requests rate
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  switched=$(switches "$pid")
  wrk -t1 -c"$2" -d"${seconds}s" -s "$dir/post.lua" "http://127.0.0.1:${port_of[$1]}/v1/orders" >"$dir/wrk.txt"
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  switched=$(($(switches "$pid") - switched))
  requests=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
  rate=$(awk '/Requests\/sec/ {print int($2)}' "$dir/wrk.txt")
  awk -v r="$rate" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" -v s="$switched" \
    'BEGIN {printf "%d %.4f %.2f\n", r, t * 1000 / hz / n, s / n}'
}
# Stops the run, saying so, when the API $1 is no longer running (its exit
# status tells a panic, 101, from an error, 1, or a signal, 128 + n).
alive() {
  local pid=${pid_of[$1]} status=0
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || status=$?
    echo "the $1 API (pid $pid) has exited, with status $status; API_LOG=<path> keeps its log" >&2
    exit 1
  fi
}
# The voluntary context switches so far of the threads of process $1.
switches() { cat "/proc/$1"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }

declare -A rate cpu switched ratios floor_ratios
for round in $(seq "$rounds"); do
  order=(base now floor)
  if ((round % 2 == 0)); then order=(now base floor); fi
  start_all
  for clients in "${levels[@]}"; do
    for which in "${order[@]}"; do
      alive "$which"
      read -r r ms s < <(measure "$which" "$clients")
      alive "$which"
      rate[$which,$clients]+="$r "
      cpu[$which,$clients]+="$ms "
      switched[$which,$clients]+="$s "
      echo "round $round, $which, $clients clients: $r requests/s, $ms ms CPU and $s switches per request" >&2
    done
    now_ms=$(awk '{print $NF}' <<<"${cpu[now,$clients]}")
    base_ms=$(awk '{print $NF}' <<<"${cpu[base,$clients]}")
    floor_ms=$(awk '{print $NF}' <<<"${cpu[floor,$clients]}")
    ratios[$clients]+="$(awk -v a="$now_ms" -v b="$base_ms" 'BEGIN {printf "%.2f", a / b}') "
    floor_ratios[$clients]+="$(awk -v a="$now_ms" -v b="$floor_ms" 'BEGIN {printf "%.2f", a / b}') "
  done
  stop_all
done

rows="" floor_rows=""
for clients in "${levels[@]}"; do
  cells=""
  for which in base now; do
    cells+="$(median_of "${rate[$which,$clients]}") | "
    cells+="$(median_of "${cpu[$which,$clients]}") | "
    cells+="$(median_of "${switched[$which,$clients]}") | "
  done
  each=$(tr ' ' '\n' <<<"${ratios[$clients]}" | grep . | paste -sd ' ' | sed 's/ /, /g')
  rows+="| $clients | $cells$(median_of "${ratios[$clients]}") ($each) |"$'\n'
  each=$(tr ' ' '\n' <<<"${floor_ratios[$clients]}" | grep . | paste -sd ' ' | sed 's/ /, /g')
  floor_rows+="| $clients | $(median_of "${rate[floor,$clients]}") | $(median_of "${cpu[floor,$clients]}") | "
  floor_rows+="$(median_of "${switched[floor,$clients]}") | $(median_of "${floor_ratios[$clients]}") ($each) |"$'\n'
done
section="## The command API's CPU per request, against the code before issue #15

\`scripts/bench-api-cpu.sh\` — commit $(git rev-parse --short HEAD) against $base — $(nproc) cores — $(date -u +%F).

\`POST /v1/orders\` (one line, a bearer token) from wrk (1 thread) against each commit's command API (release builds, both running, each on a scratch database of its own, started afresh and warmed up for 2 s every round): $rounds rounds; in each, at 1, 8 and 32 connections, one API and then the other for $seconds s (the order alternating by round). CPU is the API process's user and system time per request (\`/proc/<pid>/stat\`), switches its threads' voluntary context switches per request (each a sleep and a wake-up); figures are medians of the rounds, and the ratio is taken within each pair (each round's in brackets). Issue #15's target: a third of the code before it.

| connections | $base requests/s | $base CPU ms per request | $base switches per request | now requests/s | now CPU ms per request | now switches per request | CPU now / $base (each round) |
|---:|---:|---:|---:|---:|---:|---:|---|
$rows
The floor, measured in the same rounds after the two (\`command-side/api/examples/floor.rs\`): a bare axum server that reads the same body and writes the order as one prepared \`INSERT\` into \`es_events\`, with sqlx's pool, and answers 202; no authentication, idempotency, decision, concurrency check, NOTIFY, log line or metrics. What a command API written the plain way on axum, sqlx and PostgreSQL costs on this machine in this hour.

| connections | floor requests/s | floor CPU ms per request | floor switches per request | CPU now / floor (each round) |
|---:|---:|---:|---:|---|
$floor_rows"
echo "$section"
if [[ ${BENCH_QUICK:-0} == 0 ]]; then
  write_bench_section api-cpu "$section"
fi
