# One image holds every service of the order system; the command picks one:
#   command-api | relay | saga | notifier | migrate | projections serve | query-api
#   | payment-gateway | mint-token
# Build: docker build -t order-system .
# The binaries can keep their events in PostgreSQL (default) or EventStoreDB
# (EVENT_STORE_URL=esdb://...): they are built with the `eventstoredb` feature.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
      --features command-api/eventstoredb,relay/eventstoredb,saga/eventstoredb,notifier/eventstoredb,projections/eventstoredb,query-side/eventstoredb \
 && mkdir /out \
 && cp target/release/command-api target/release/relay target/release/saga target/release/notifier target/release/migrate \
       target/release/projections target/release/query-api target/release/payment-gateway \
       target/release/mint-token /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home app
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV LOG_FORMAT=json \
    HEALTH_URL=http://127.0.0.1:8080/health/live
# Each service sets HEALTH_URL to its own /health/live (an API's address, or its *_OPS_ADDR).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "$HEALTH_URL" >/dev/null || exit 1
ENTRYPOINT []
CMD ["command-api"]
