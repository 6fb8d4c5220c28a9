#!/usr/bin/env bash
# A CPU profile of the command API under `POST /v1/orders` load, as a flame
# graph: the API (profile `profiling`: release code with line tables) on a
# scratch database, wrk at WRK_CONNECTIONS (default 8) for PROFILE_SECONDS
# (default 10), `perf record` on the API's process meanwhile.
#
#   scripts/profile-api.sh [out.svg]     (default docs/perf/command-api.svg)
#
# FOLDED=path keeps the collapsed stacks too (for inferno-diff-folded).
# Needs perf (Debian linux-perf), wrk, and inferno (`cargo install inferno`).
# Prints the requests per second and the API's CPU milliseconds per request.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/perf/command-api.svg}
connections=${WRK_CONNECTIONS:-8}
seconds=${PROFILE_SECONDS:-10}

cargo build --quiet --profile profiling -p command-api --bin command-api -p service-kit --bin mint-token
# shellcheck source=scripts/lib/command-api.sh
source scripts/lib/command-api.sh
trap stop_command_api EXIT
start_command_api target/profiling/command-api target/profiling/mint-token

run() { wrk -t1 -c"$connections" -d"$1" -s "$work/post.lua" "http://127.0.0.1:$port/v1/orders"; }
ticks() { awk '{print $14 + $15}' "/proc/$api/stat"; }
# Requests per second and API CPU per request of one run (wrk's output in $work/wrk.txt).
report() {
  local requests hz
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  hz=$(getconf CLK_TCK)
  awk -v t=$(($2 - $1)) -v hz="$hz" -v n="$requests" -v rate="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")" -v what="$3" \
    'BEGIN {printf "%s: %d requests/s, command API CPU %.3f ms per request\n", what, rate, t * 1000 / hz / n}'
}
run 2s >/dev/null # warm-up
before=$(ticks); run "${seconds}s" > "$work/wrk.txt"; after=$(ticks)
report "$before" "$after" "POST /v1/orders, $connections connections"
perf record -q -F 499 --call-graph dwarf,16384 -p "$api" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null &
perf_pid=$!
before=$(ticks); run "${seconds}s" > "$work/wrk.txt"; after=$(ticks)
wait "$perf_pid"
report "$before" "$after" "the same under perf"

mkdir -p "$(dirname "$out")"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf --all > "$work/folded"
inferno-flamegraph --colors rust --minwidth 2 --title "command API, POST /v1/orders, $connections connections" < "$work/folded" > "$out"
[[ -n ${FOLDED:-} ]] && cp "$work/folded" "$FOLDED"
echo "flame graph: $out"
