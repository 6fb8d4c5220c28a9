#!/usr/bin/env bash
# Issue #15's own table, measured as the issue measured it: `POST /v1/orders`
# from wrk against the command API's release binary, beside one INSERT of an
# `OrderPlaced`-sized row per transaction from pgbench, at 1, 8 and 32
# clients. Both load generators are C programs in processes of their own;
# each run is preceded by a CHECKPOINT, and the three alternate, round after
# round (medians of ROUNDS, default 3, runs of SECONDS_EACH, default 5,
# wrk's each after 1 s of warm-up).
#
#   scripts/bench-wrk-pgbench.sh          (BENCH_QUICK=1: print only, leave BENCHMARKS.md alone)
#
# pgbench runs twice: with its default simple protocol (what "pgbench" with
# a script means, and what the issue's figures were), and with
# `-M prepared` (planned once, as the store's statements are). The Rust
# benchmark `cargo bench -p command-api --bench commands` has a stricter
# baseline still (each client a sqlx connection with its statement
# prepared, in the benchmark's process). Needs wrk and pgbench
# (Debian: wrk; pgbench comes with the server package, postgresql-15).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
seconds=${SECONDS_EACH:-5}
psql_=(psql -q -h 127.0.0.1 -U postgres)

cargo build --quiet --release -p command-api --bin command-api -p service-kit --bin mint-token
# shellcheck source=scripts/lib/command-api.sh
source scripts/lib/command-api.sh
# shellcheck source=scripts/lib/benchmarks.sh
source scripts/lib/benchmarks.sh
trap stop_command_api EXIT
start_command_api target/release/command-api target/release/mint-token
# The API has migrated the database: the baseline's table is es_events' twin.
"${psql_[@]}" -d "$db" -c "CREATE TABLE bench_raw (LIKE es_events INCLUDING ALL)"
# The row an OrderPlaced makes, its payload and metadata as the API writes
# them (no ':' followed by a letter or digit: pgbench would take it for a variable).
cat > "$work/insert.sql" <<'SQL'
INSERT INTO bench_raw (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) VALUES (gen_random_uuid(), 'order-' || gen_random_uuid(), 1, 'OrderPlaced', 1, '{"order_id": "0b6f1b7e-5f4c-4d8e-9a51-1f2e3d4c5b6a", "customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa", "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1999}], "total_cents": 1999, "placed_at": "2026-12-03T22-50-00.123456Z", "deadline": "2026-12-03T23-05-00.123456Z"}', '{"correlation_id": "3f1c2b4a-6d5e-4f70-8a9b-0c1d2e3f4a5b", "causation_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "actor": "customer-c-42", "trace_context": {}}');
SQL

checkpoint() { "${psql_[@]}" -d "$db" -c CHECKPOINT; }
wrk_rate() {
  wrk -t1 -c"$1" -d1s -s "$work/post.lua" "http://127.0.0.1:$port/v1/orders" >/dev/null
  wrk -t1 -c"$1" -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$port/v1/orders" | awk '/Requests\/sec/ {print int($2)}'
}
pgbench_rate() {
  pgbench -n -M "$2" -h 127.0.0.1 -U postgres -f "$work/insert.sql" -c "$1" -j 1 -T "$seconds" "$db" 2>/dev/null |
    awk '/^tps/ {print int($3)}'
}

declare -A figures
for round in $(seq "$rounds"); do
  for clients in 1 8 32; do
    checkpoint; figures[api,$clients]+="$(wrk_rate "$clients") "
    checkpoint; figures[simple,$clients]+="$(pgbench_rate "$clients" simple) "
    checkpoint; figures[prepared,$clients]+="$(pgbench_rate "$clients" prepared) "
    echo "round $round, $clients clients: POST ${figures[api,$clients]}| pgbench ${figures[simple,$clients]}| prepared ${figures[prepared,$clients]}" >&2
  done
done

rows=""
for clients in 1 8 32; do
  api_=$(median_of "${figures[api,$clients]}")
  simple=$(median_of "${figures[simple,$clients]}")
  prepared=$(median_of "${figures[prepared,$clients]}")
  rows+="| $clients | $api_ | $simple | $((100 * api_ / simple))% | $prepared | $((100 * api_ / prepared))% |"$'\n'
done
server=$("${psql_[@]}" -d "$db" -Atc "SELECT version()" | awk '{print $1, $2}')
# The rows' sizes, the API's and the baseline's: the same work per row.
sizes=$("${psql_[@]}" -d "$db" -Atc "SELECT (SELECT avg(pg_column_size(e.*))::int FROM es_events e) || ' / ' || (SELECT avg(pg_column_size(r.*))::int FROM bench_raw r)")
section="## HTTP commands, as issue #15 measured them (wrk and pgbench)

\`scripts/bench-wrk-pgbench.sh\` — $server (synchronous_commit=on) on the same machine, $(nproc) cores — commit $(git rev-parse --short HEAD) — $(date -u +%F).

\`POST /v1/orders\` (one line, a bearer token) from wrk (1 thread) against the command API's release binary, beside pgbench inserting one \`OrderPlaced\`-sized row per transaction into a table \`LIKE es_events INCLUDING ALL\` in the same database (average row $sizes bytes), with its default simple protocol and with \`-M prepared\`. Each figure is the median of $rounds rounds of $seconds s, the three alternating, each after a \`CHECKPOINT\`. Issue #15's targets: at 32 clients at least 1.5x the raw rate, at 1 and 8 at least 70% of it. The stricter baseline of \`cargo bench -p command-api --bench commands\` (section \"HTTP commands\") is the one this project holds itself to.

| clients | POST /v1/orders per s (wrk) | pgbench INSERTs per s | orders / pgbench | pgbench -M prepared per s | orders / prepared |
|---:|---:|---:|---:|---:|---:|
$rows"
echo "$section"
if [[ ${BENCH_QUICK:-0} == 0 ]]; then
  write_bench_section commands-wrk "$section"
fi
