#!/usr/bin/env bash
# Start the coordinator's SuperLink: TLS, a persistent state database, SuperNode authentication,
# and no runtime installation of app dependencies (the coordinator installs fedpoint itself).
#
#   deploy/start-superlink.sh CERTS_DIR STATE_DIR
#
# CERTS_DIR holds ca.crt, superlink.pem and superlink.key (deploy/make-certs.sh).
# STATE_DIR receives state.db and superlink.log.
# HOST (default 127.0.0.1) and PORT (default 9093) choose where the SuperLink listens; one HTTPS port
# serves the SuperNodes (Fleet API), the `flwr` CLI (Control API) and the ServerApp. Flower 1.41
# cannot authenticate the Control API, so keep HOST on loopback and expose only /v1/fleet/ to the
# sites (a reverse proxy or firewall rule; see deploy/README.md, "Who can run code at a site").
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

export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}
exec flower-superlink \
  --ssl-ca-certfile "$certs/ca.crt" \
  --ssl-certfile "$certs/superlink.pem" \
  --ssl-keyfile "$certs/superlink.key" \
  --database "$state/state.db" \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --host "${HOST:-127.0.0.1}" \
  --port "${PORT:-9093}" \
  --log-file "$state/superlink.log"
