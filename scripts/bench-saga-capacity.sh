#!/usr/bin/env bash
# Issue #15's third goal as a benchmark: the saga's capacity (the highest
# steady rate of orders whose placed -> confirmed p99 stays under 100 ms)
# against an earlier commit's (by default 06e4a2b, the code before issue
# #15), both measured by their own saga benchmark (`cargo bench -p saga
# --bench saga`, release builds), alternating in one run.
#
# Each round searches both capacities side by side: a run of the earlier
# commit, then one of the current code (the order alternating by round, so a
# machine slowing down favours neither), each at the next rate of its own
# search. A search starts at BASE_FROM (default 250) and NOW_FROM (default
# TARGET_MULTIPLE x BASE_FROM) orders/s, grows by half while the rate holds,
# then halves the gap between the last rate that held and the first that did
# not, for STEPS (default 5) runs of RUN_SECONDS (default 15) each. A rate
# holds when p99 is under 100 ms and at least 95% of it was placed. Each
# round then runs the current code once more at TARGET_MULTIPLE (default 4)
# times the earlier commit's capacity of that round: issue #15's target as
# it states it (1 compares a change with the commit before it). Figures are
# per round and their medians; the ratio is taken within each round (its
# grain is about a sixteenth of the starting rates: the two searches take
# proportional steps).
#
#   scripts/bench-saga-capacity.sh [BASE_COMMIT]   (BENCH_QUICK=1: print only, leave BENCHMARKS.md alone)
#
# The earlier commit's benchmark is built once, from a worktree of its own,
# into target/base-<commit> (kept for later runs; the same directory as
# scripts/bench-api-cpu.sh's). Each run uses a database and JetStream
# streams of its own, deleted afterwards (the benchmarks' own clean-up).
# 06e4a2b's benchmark places its orders from the services' own process;
# later ones from a process of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(git rev-parse --short "${1:-06e4a2b}")
rounds=${ROUNDS:-3}
steps=${STEPS:-5}
seconds=${RUN_SECONDS:-15}
base_from=${BASE_FROM:-250}
multiple=${TARGET_MULTIPLE:-4}
now_from=${NOW_FROM:-$((multiple * base_from))}
target_ms=100
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

# shellcheck source=scripts/lib/benchmarks.sh
source scripts/lib/benchmarks.sh
log=$(mktemp)
clean_up() {
  local status=$?
  remove_worktree
  if ((status == 0)); then rm -f "$log"; fi
}
trap clean_up EXIT

# The path of the saga benchmark's executable, built here into the target
# directory $1.
build_saga_bench() {
  CARGO_TARGET_DIR=$1 cargo bench --quiet -p saga --bench saga --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "bench" in m.get("target", {}).get("kind", []) and m.get("executable"):
        print(m["executable"])'
}
declare -A bench_of
bench_of[now]=$(build_saga_bench "$PWD/target")
# Where the earlier commit's executable is, once built.
built=target/base-$base/saga-bench
if [[ ! -s $built || ! -x $(cat "$built") ]]; then
  echo "building the saga benchmark of $base into target/base-$base (once)" >&2
  mkdir -p "target/base-$base"
  in_worktree "$base" build_saga_bench "$PWD/target/base-$base" >"$built.new"
  mv "$built.new" "$built"
fi
bench_of[base]=$(cat "$built")
# Where the benchmarks place their orders (the current one: from a process of its own).
placing="each placing its orders from a process of its own"
if ! grep -qa BENCH_LOAD_API "${bench_of[base]}"; then
  placing="$base placing its orders from the services' process, the current code from a process of its own"
fi
against=$base
if [[ $base == 06e4a2b ]]; then against="the code before issue #15"; fi

# Runs the benchmark of $1 ("base" or "now") at $2 orders/s; prints
# "p99-ms achieved-orders/s holds" ("holds" is 1 or 0).
# A benchmark that fails stops the script, its output left in $log.
run_at() {
  local out p99 offered
  if ! out=$(cd command-side/saga && BENCH_QUICK=1 BENCH_RATE=$2 BENCH_SECONDS=$seconds "${bench_of[$1]}" --bench 2>"$log"); then
    echo "the saga benchmark of $1 failed at $2 orders/s; its output: $log" >&2
    return 1
  fi
  p99=$(awk -F'|' '/placed -> confirmed \(saga\)/ {gsub(/ /, "", $5); print $5}' <<<"$out")
  offered=$(awk '/^offered/ {print $2}' <<<"$out")
  awk -v p="$p99" -v o="$offered" -v r="$2" -v t=$target_ms \
    'BEGIN {printf "%s %s %d\n", p, o, (p + 0 < t && o + 0 >= 0.95 * r)}'
}

declare -A rate good bad capacity runs
rows="" tried="" ratios=""
for round in $(seq "$rounds"); do
  order=(base now)
  if ((round % 2 == 0)); then order=(now base); fi
  rate[base]=$base_from rate[now]=$now_from good[base]=0 good[now]=0 bad[base]=0 bad[now]=0
  for step in $(seq "$steps"); do
    for which in "${order[@]}"; do
      r=${rate[$which]}
      read -r p99 offered holds < <(run_at "$which" "$r")
      verdict="does not hold"
      if ((holds)); then verdict=holds; fi
      echo "round $round, step $step, $which at $r orders/s: p99 $p99 ms, $offered placed/s: $verdict" >&2
      runs[$which]+="$r: $p99; "
      if ((holds)); then
        good[$which]=$((r > good[$which] ? r : good[$which]))
      elif ((bad[$which] == 0 || r < bad[$which])); then
        bad[$which]=$r
      fi
      if ((bad[$which] == 0)); then
        rate[$which]=$((r * 3 / 2))
      else
        rate[$which]=$(((good[$which] + bad[$which]) / 2))
      fi
    done
  done
  for which in base now; do capacity[$which]+="${good[$which]} "; done
  if ((good[base] == 0)); then
    # Nothing held: there is no ratio, and no multiple to try.
    echo "round $round: $base held none of its rates (lower BASE_FROM)" >&2
    rows+="| $round | none held | ${good[now]} | - | - |"$'\n'
  else
    ratio=$(awk -v a="${good[now]}" -v b="${good[base]}" 'BEGIN {printf "%.1f", a / b}')
    ratios+="${ratio}x "
    times=$((multiple * good[base]))
    read -r p99 offered holds < <(run_at now "$times")
    verdict="does not hold"
    if ((holds)); then verdict=holds; fi
    echo "round $round: $base holds ${good[base]}, now ${good[now]} orders/s (${ratio}x); now at $multiple x ${good[base]} = $times: p99 $p99 ms, $verdict" >&2
    rows+="| $round | ${good[base]} | ${good[now]} | ${ratio}x | $times: p99 $p99 ms, $verdict |"$'\n'
  fi
  tried+="| $round | ${runs[base]%; } | ${runs[now]%; } |"$'\n'
  runs[base]="" runs[now]=""
done

section="## Saga capacity, against $against

\`scripts/bench-saga-capacity.sh\` — commit $(git rev-parse --short HEAD) against $base — $(nproc) cores — $(date -u +%F).

Each commit's own saga benchmark (\`cargo bench -p saga --bench saga\`, release builds; a fresh shop, database and JetStream streams per run; $placing), alternating run by run: $rounds rounds, each a search of $steps runs of $seconds s per commit (from $base_from and $now_from orders/s: up by half while the rate holds, then halving the gap), then the current code once more at $multiple times $base's capacity of that round (issue #15's target: 4). A rate holds when placed -> confirmed p99 is under $target_ms ms and at least 95% of it was placed. The two searches take proportional steps, so a round whose runs get the same verdicts gives exactly the ratio of the starting rates, and a ratio moves in steps of about a sixteenth of them; the run at $multiple times is the finer test. One run's verdict near the line is noisy: rerun before reading much into one round.

| round | $base capacity, orders/s | now capacity, orders/s | now / $base | now at $multiple x $base's capacity |
|---:|---:|---:|---:|---|
${rows}
Medians: $base $(median_of "${capacity[base]}"), now $(median_of "${capacity[now]}") orders/s; of the rounds' ratios $(median_of "$ratios").

Every run, rate: p99 ms:

| round | $base | now |
|---:|---|---|
${tried}"
echo "$section"
if [[ ${BENCH_QUICK:-0} == 0 ]]; then
  write_bench_section saga-vs-base "$section"
fi
