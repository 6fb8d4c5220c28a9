#!/usr/bin/env bash
# Starts the whole system on this machine: PostgreSQL and NATS (installed or
# started by scripts/services.sh), then every service as its own process,
# with readable logs. Ctrl-C stops them all.
#
# Services: the command API (http://127.0.0.1:8080), the relay (log -> NATS
# JetStream stream EVENTS), the saga participants, the notifier (webhooks;
# e-mail when SMTP_URL is set), the payment gateway simulator
# (http://127.0.0.1:8090), the projections, the query API
# (http://127.0.0.1:8081). Every service serves /health/* and /metrics to its
# operators: the relay, the participants, the projections and the notifier
# on 127.0.0.1:9101, 9102, 9103 and 9106, the command and query APIs on 9104 and 9105
# (their public addresses answer /health/* only, without reasons).
# Configuration: the environment variables in the README's table
# (EVENT_STORE_URL=esdb://... keeps the events in EventStoreDB).
set -euo pipefail
cd "$(dirname "$0")/.."

# The services check the server with the tests' database; this system creates its own.
env -u DATABASE_URL bash scripts/services.sh
# EVENT_STORE_URL naming EventStoreDB needs the binaries built with its feature.
features=()
case "${EVENT_STORE_URL:-}" in
  esdb*|kurrentdb*) features=(--features command-api/eventstoredb,relay/eventstoredb,saga/eventstoredb,notifier/eventstoredb,projections/eventstoredb,query-side/eventstoredb) ;;
esac
cargo build --bins --quiet "${features[@]}"

export LOG_FORMAT=${LOG_FORMAT:-pretty}
pids=()
stop() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
  wait
}
trap stop EXIT INT TERM

./target/debug/migrate
./target/debug/command-api & pids+=($!)
./target/debug/relay & pids+=($!)
./target/debug/payment-gateway & pids+=($!)
./target/debug/saga & pids+=($!)
./target/debug/notifier & pids+=($!)
./target/debug/projections serve & pids+=($!)
./target/debug/query-api & pids+=($!)

echo "[dev] commands on http://${COMMAND_HTTP_ADDR:-127.0.0.1:8080}, queries on http://${QUERY_HTTP_ADDR:-127.0.0.1:8081} — Ctrl-C stops everything" >&2
wait -n
