#!/usr/bin/env bash
# Register sites' public keys with the SuperLink, so their SuperNodes may connect (the SuperLink runs
# with --enable-supernode-auth: an unregistered key is refused).
#
#   deploy/register-sites.sh CONNECTION SITE_KEY.pub [SITE_KEY.pub ...]
#
# CONNECTION is a [superlink.NAME] entry of $FLWR_HOME/config.toml (deploy/add-connection.sh).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONNECTION SITE_KEY.pub [SITE_KEY.pub ...]" >&2
  exit 2
fi
connection=$1
shift
for key in "$@"; do
  [[ -f "$key" ]] || { echo "no public key $key" >&2; exit 2; }
  name=$(basename "$key" .pub)
  flwr supernode register "$key" "$connection" --name "$name"
done
