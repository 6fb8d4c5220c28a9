#!/usr/bin/env bash
# Starts the whole system on this machine: PostgreSQL and NATS (installed or
# started by scripts/services.sh), then every service as its own process,
# with readable logs. Ctrl-C stops them all.
#
# Services so far: command-side (http://127.0.0.1:8080).
# Configuration: the environment variables in the README's table.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
cargo build --bins --quiet

export LOG_FORMAT=${LOG_FORMAT:-pretty}
pids=()
stop() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
  wait
}
trap stop EXIT INT TERM

./target/debug/command-side migrate
./target/debug/command-side serve & pids+=($!)

echo "[dev] command API on http://${COMMAND_HTTP_ADDR:-127.0.0.1:8080} — Ctrl-C stops everything" >&2
wait -n
