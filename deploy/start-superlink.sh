#!/usr/bin/env bash
# Start the coordinator's SuperLink: TLS, a persistent state database, SuperNode authentication,
# and no runtime installation of app dependencies (the coordinator installs fedpoint itself).
#
#   deploy/start-superlink.sh CERTS_DIR STATE_DIR
#
# CERTS_DIR holds ca.crt, superlink.pem and superlink.key (deploy/make-certs.sh).
# STATE_DIR receives state.db and superlink.log, and flwr-version: the Flower version that last
# started on it (a copy of state.db is kept before the first start on another version).
# HOST (default 127.0.0.1) and PORT (default 9093) choose where the SuperLink listens; one HTTPS port
# serves the SuperNodes (Fleet API), the `flwr` CLI (Control API) and the ServerApp. Flower (1.42)
# cannot authenticate the Control API, so keep HOST on loopback and let the sites in through
# deploy/start-proxy.sh (Fleet API only; see deploy/README.md, "Who can run code at a site").
# SUPERLINK_BIN (default flower-superlink) is the command started.
# The script `exec`s the SuperLink, so its process id is the SuperLink's.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 CERTS_DIR STATE_DIR" >&2
  exit 2
fi
certs=$1
state=$2
for f in ca.crt superlink.pem superlink.key; do
  [[ -f "$certs/$f" ]] || { echo "missing $certs/$f (run deploy/make-certs.sh)" >&2; exit 2; }
done
mkdir -p "$state"

# Flower migrates state.db one way on an upgrade (a state.db that 1.42 opened cannot be opened by
# 1.41 again). Before the first start on a Flower version other than the one that last opened it,
# keep a copy: state.db.before-flwr-<new version>.bak (once; the version is then recorded).
superlink=${SUPERLINK_BIN:-flower-superlink}
flwr_version=$("$superlink" --version 2>/dev/null | sed -n 's/^Flower version: *//p' || true)
flwr_version=${flwr_version:-unknown}
if [[ -f "$state/state.db" && "$(cat "$state/flwr-version" 2>/dev/null || true)" != "$flwr_version" ]]; then
  backup="$state/state.db.before-flwr-$flwr_version.bak"
  if [[ ! -e "$backup" ]]; then
    cp -p "$state/state.db" "$backup.partial"
    for extra in wal shm; do  # SQLite's write-ahead log, if the last SuperLink left one
      [[ -f "$state/state.db-$extra" ]] && cp -p "$state/state.db-$extra" "$backup-$extra"
    done
    mv "$backup.partial" "$backup"
    echo "backed up $state/state.db to $backup before its first start on Flower $flwr_version" >&2
  fi
fi
printf '%s\n' "$flwr_version" > "$state/flwr-version"

export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}
exec "$superlink" \
  --ssl-ca-certfile "$certs/ca.crt" \
  --ssl-certfile "$certs/superlink.pem" \
  --ssl-keyfile "$certs/superlink.key" \
  --database "$state/state.db" \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --host "${HOST:-127.0.0.1}" \
  --port "${PORT:-9093}" \
  --log-file "$state/superlink.log"
