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
db=profile_api_$$
port=$((20000 + RANDOM % 20000))
secret=profile-secret-of-at-least-32-bytes-long
work=$(mktemp -d)

cargo build --quiet --profile profiling -p command-api --bin command-api -p service-kit --bin mint-token
psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
cleanup() {
  [[ -n ${api:-} ]] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

export JWT_SECRET=$secret
DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db COMMAND_HTTP_ADDR=127.0.0.1:$port COMMAND_OPS_ADDR=127.0.0.1:0 \
  RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
  target/profiling/command-api 2>/dev/null &
api=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
token=$(target/profiling/mint-token c-42)

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
wrk.body = '{"customer_id":"c-42","currency":"EUR","payment_token":"tok_visa","lines":[{"sku":"SKU-1","quantity":1,"unit_price_cents":1999}]}'
LUA

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
