# shellcheck shell=bash
# Sourced by the scripts that load the command API (profile-api.sh,
# bench-wrk-pgbench.sh, bench-api-cpu.sh): starts a built command API on a
# scratch database and a free port, with rate limits out of the way, and
# writes wrk's script for `POST /v1/orders` with a bearer token. The API's
# log goes to API_LOG (a path) if set, else nowhere.
#
#   start_command_api BINARY MINT_TOKEN_BINARY
#
# Sets: api (the API's pid), port, db (the scratch database), work (a
# scratch directory holding post.lua). stop_command_api (run it on EXIT)
# stops the API, drops the database and removes the directory.

start_command_api() {
  local binary=$1 mint=$2 token
  db=command_api_${$}_${RANDOM}
  # Under the kernel's ephemeral ports (32768 and up), where the other
  # APIs' ops endpoints (port 0) and every client socket take theirs: an API
  # whose port was taken there would exit, while another API's ops endpoint
  # on that port could answer the readiness check below (one way a run could
  # stop as one did on 2026-12-05, on an API gone before its measurement).
  port=$((20000 + RANDOM % 12000))
  work=$(mktemp -d)
  export JWT_SECRET=scripts-secret-of-at-least-32-bytes-long
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db COMMAND_HTTP_ADDR=127.0.0.1:$port COMMAND_OPS_ADDR=127.0.0.1:0 \
    RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
    "$binary" 2>"${API_LOG:-/dev/null}" &
  api=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "127.0.0.1:$port/health/ready" >/dev/null || { echo "the command API did not become ready on port $port" >&2; return 1; }
  kill -0 "$api" 2>/dev/null || { echo "the command API exited at start (port $port taken?)" >&2; return 1; }
  token=$("$mint" c-42)
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
wrk.body = '{"customer_id":"c-42","currency":"EUR","payment_token":"tok_visa","lines":[{"sku":"SKU-1","quantity":1,"unit_price_cents":1999}]}'
LUA
}

stop_command_api() {
  if [[ -n ${api:-} ]]; then
    kill "$api" 2>/dev/null || true
    wait "$api" 2>/dev/null || true
  fi
  if [[ -n ${db:-} ]]; then
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  fi
  if [[ -n ${work:-} ]]; then rm -rf "$work"; fi
}
