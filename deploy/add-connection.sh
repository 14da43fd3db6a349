#!/usr/bin/env bash
# Tell the `flwr` CLI how to reach the consortium's SuperLink (a [superlink.NAME] entry in
# $FLWR_HOME/config.toml, default ~/.flwr/config.toml).
#
#   deploy/add-connection.sh NAME HOST:PORT CA_CERT
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 NAME HOST:PORT CA_CERT" >&2
  exit 2
fi
name=$1
address=$2
ca=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
[[ -f "$ca" ]] || { echo "no CA certificate $3" >&2; exit 2; }
home=${FLWR_HOME:-$HOME/.flwr}
config="$home/config.toml"
if [[ ! -f "$config" ]]; then
  flwr config list >/dev/null  # lets flwr write its own default file first
fi
if grep -q "^\[superlink\.$name\]" "$config"; then
  echo "connection '$name' already in $config; edit it there" >&2
  exit 0
fi
printf '\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' "$name" "$address" "$ca" >> "$config"
echo "added connection '$name' ($address) to $config"
