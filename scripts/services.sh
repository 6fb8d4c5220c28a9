#!/usr/bin/env bash
# Makes sure the PostgreSQL and NATS (JetStream) servers the system needs are
# running on this machine: starts them if they are installed but stopped, and
# installs them with apt-get on a fresh Debian machine, with the server
# binaries the fault-injection suite starts servers of its own from. Idempotent.
#
#   DATABASE_URL  default postgres://postgres@127.0.0.1:5432/test
#   NATS_URL      default nats://127.0.0.1:4222 (only the local default is managed)
set -euo pipefail

DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
log() { printf '[services] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  log "nothing answers on port $1"; return 1
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      log "installing PostgreSQL"
      apt_install postgresql postgresql-client
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432
  fi
  if ! psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for passwords on TCP and has no `test`
    # database: trust local connections (this is a development or CI machine).
    log "configuring PostgreSQL for local passwordless access"
    local hba
    hba=$(su postgres -c "psql -Atqc 'SHOW hba_file'")
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    su postgres -c "psql -qc 'SELECT pg_reload_conf()'" >/dev/null
    su postgres -c "psql -Atqc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 \
      || su postgres -c "createdb test"
    psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null
  fi
  log "PostgreSQL is up"
}

ensure_nats() {
  if ! port_open 4222; then
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
      log "installing NATS"
      apt_install nats-server
    fi
    local bin
    bin=$(command -v nats-server || echo /usr/sbin/nats-server)
    mkdir -p /var/lib/nats-server
    log "starting NATS with JetStream"
    start-stop-daemon --start --oknodo --background --exec "$bin" -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_port 4222
  fi
  log "NATS is up"
}

# The fault-injection suite runs PostgreSQL and NATS servers of its own
# (initdb, pg_ctl, nats-server): make sure the server binaries are here even
# when the running servers came from elsewhere.
ensure_server_binaries() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${PG_BIN_DIR:-}" ]; then
    log "installing PostgreSQL's server binaries"
    apt_install postgresql
  fi
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    log "installing nats-server"
    apt_install nats-server
  fi
}

ensure_postgres
ensure_nats
ensure_server_binaries
