#!/usr/bin/env bash
# Issue #15's second goal as a benchmark: the command API's CPU time per
# `POST /v1/orders` against an earlier commit's API (by default 06e4a2b,
# the code before issue #15), both release builds, alternating in one run.
#
# Each round starts each API on a scratch database of its own (the earlier
# one first in odd rounds, second in even ones, so a machine slowing down
# within the hour favours neither), warms it up for 2 s at 8 connections,
# then measures it at 1, 8 and 32 wrk connections for SECONDS_EACH (default
# 5) each: requests per second, and the API process's CPU time (user and
# system, from /proc/<pid>/stat) and its threads' voluntary context
# switches (each a sleep and a wake-up) per request. The figures are the medians
# of ROUNDS (default 3) rounds; the ratio is taken within each round, so a
# pair is always measured minutes apart at most.
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
tree=""
clean_up() {
  stop_command_api
  if [[ -n $tree ]]; then git worktree remove --force "$tree"; fi
}
trap clean_up EXIT

cargo build --quiet --release -p command-api --bin command-api -p service-kit --bin mint-token
base_bin=target/base-$base/release/command-api
if [[ ! -x $base_bin ]]; then
  echo "building the command API of $base into target/base-$base (once)" >&2
  tree=$(mktemp -d)
  git worktree add --quiet --detach "$tree" "$base"
  (cd "$tree" && CARGO_TARGET_DIR="$OLDPWD/target/base-$base" cargo build --quiet --release -p command-api --bin command-api)
  git worktree remove --force "$tree"
  tree=""
fi

# Prints "clients requests/s ms-of-CPU switches", per request, a line per
# level, for the API binary $1 on a scratch database of its own.
measure() {
  local clients before after switched requests rate
  start_command_api "$1" target/release/mint-token
  wrk -t1 -c8 -d2s -s "$work/post.lua" "http://127.0.0.1:$port/v1/orders" >/dev/null
  for clients in "${levels[@]}"; do
    before=$(awk '{print $14 + $15}' "/proc/$api/stat")
    switched=$(switches)
    wrk -t1 -c"$clients" -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$port/v1/orders" >"$work/wrk.txt"
    after=$(awk '{print $14 + $15}' "/proc/$api/stat")
    switched=$(($(switches) - switched))
    requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    rate=$(awk '/Requests\/sec/ {print int($2)}' "$work/wrk.txt")
    awk -v c="$clients" -v r="$rate" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" -v s="$switched" \
      'BEGIN {printf "%d %d %.4f %.2f\n", c, r, t * 1000 / hz / n, s / n}'
  done
  stop_command_api
  api="" db="" work=""
}
# The API's threads' voluntary context switches so far.
switches() { cat "/proc/$api"/task/*/status | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'; }
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

declare -A rate cpu switched ratios
for round in $(seq "$rounds"); do
  order=(base now)
  if ((round % 2 == 0)); then order=(now base); fi
  for which in "${order[@]}"; do
    binary=target/release/command-api
    if [[ $which == base ]]; then binary=$base_bin; fi
    while read -r clients r ms s; do
      rate[$which,$clients]+="$r "
      cpu[$which,$clients]+="$ms "
      switched[$which,$clients]+="$s "
      echo "round $round, $which ($binary), $clients clients: $r requests/s, $ms ms CPU and $s switches per request" >&2
    done < <(measure "$binary")
  done
  for clients in "${levels[@]}"; do
    now_ms=$(awk '{print $NF}' <<<"${cpu[now,$clients]}")
    base_ms=$(awk '{print $NF}' <<<"${cpu[base,$clients]}")
    ratios[$clients]+="$(awk -v a="$now_ms" -v b="$base_ms" 'BEGIN {printf "%.2f", a / b}') "
  done
done

rows=""
for clients in "${levels[@]}"; do
  cells=""
  for which in base now; do
    cells+="$(tr ' ' '\n' <<<"${rate[$which,$clients]}" | grep . | median) | "
    cells+="$(tr ' ' '\n' <<<"${cpu[$which,$clients]}" | grep . | median) | "
    cells+="$(tr ' ' '\n' <<<"${switched[$which,$clients]}" | grep . | median) | "
  done
  each=$(tr ' ' '\n' <<<"${ratios[$clients]}" | grep . | paste -sd ' ' | sed 's/ /, /g')
  rows+="| $clients | $cells$(tr ' ' '\n' <<<"${ratios[$clients]}" | grep . | median) ($each) |"$'\n'
done
section="## The command API's CPU per request, against the code before issue #15

\`scripts/bench-api-cpu.sh\` — commit $(git rev-parse --short HEAD) against $base — $(nproc) cores — $(date -u +%F).

\`POST /v1/orders\` (one line, a bearer token) from wrk (1 thread) against each commit's command API (release builds, each on a scratch database of its own), alternating: $rounds rounds, each API measured at 1, 8 and 32 connections for $seconds s after 2 s of warm-up. CPU is the API process's user and system time per request (\`/proc/<pid>/stat\`), switches its threads' voluntary context switches per request (each a sleep and a wake-up); figures are medians of the rounds, and the ratio is taken within each round (each round's in brackets). Issue #15's target: a third of the code before it.

| connections | $base requests/s | $base CPU ms per request | $base switches per request | now requests/s | now CPU ms per request | now switches per request | CPU now / $base (each round) |
|---:|---:|---:|---:|---:|---:|---:|---|
$rows"
echo "$section"
if [[ ${BENCH_QUICK:-0} == 0 ]]; then
  write_bench_section api-cpu "$section"
fi
