#!/usr/bin/env bash
# On the operator's machine: let the `flwr` CLI reach the coordinator's Control API through its
# proxy with the operator's client certificate. Flower's CLI cannot present a client certificate
# itself, so this runs nginx on the operator's loopback: `flwr` connects there in plain HTTP
# (`insecure = true`), nginx forwards /v1/control/ to the proxy over TLS with operator.pem.
#
#   deploy/operator-bridge.sh CERTS_DIR PROXY_HOST:PORT STATE_DIR
#
# CERTS_DIR: ca.crt, operator.pem, operator.key (deploy/make-certs.sh; keep operator.key on this
# machine only). LISTEN (default 127.0.0.1:9095): where `flwr` connects; keep it on loopback. Add the
# connection once with
#   printf '[superlink.consortium]\naddress = "127.0.0.1:9095"\ninsecure = true\n' >> ~/.flwr/config.toml
# PROXY_NAME (default: PROXY_HOST) is the name the proxy's certificate must carry.
# The script `exec`s nginx in the foreground.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 CERTS_DIR PROXY_HOST:PORT STATE_DIR" >&2
  exit 2
fi
certs=$(cd "$1" && pwd)
proxy=$2
mkdir -p "$3/tmp"
state=$(cd "$3" && pwd)
for f in ca.crt operator.pem operator.key; do
  [[ -f "$certs/$f" ]] || { echo "missing $certs/$f (deploy/make-certs.sh issues it)" >&2; exit 2; }
done
listen=${LISTEN:-127.0.0.1:9095}
case "$listen" in
  127.*|localhost:*|"[::1]":*) ;;
  *) echo "LISTEN=$listen: the bridge acts as the operator for whoever reaches it; keep it on loopback" >&2; exit 2 ;;
esac
nginx=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x "$nginx" ]] || { echo "no nginx (install Debian's package: apt-get install nginx)" >&2; exit 2; }
python=${PYTHON:-python3}
"$python" - "$(dirname "$0")/nginx/operator-bridge.conf.in" "$state/bridge.conf" <<PY
import re, sys
text = open(sys.argv[1]).read()
values = {"LISTEN": "$listen", "PROXY": "$proxy", "PROXY_NAME": "${PROXY_NAME:-${proxy%:*}}", "CERTS": "$certs",
          "STATE": "$state", "MAX_BODY": "${MAX_BODY:-1g}"}
for key, value in values.items():
    if re.search(r'[\s"\\\\;{}]', value):
        sys.exit(f"{key}={value!r}: spaces, quotes, backslashes, ';' and braces are not allowed")
    text = text.replace(f"@{key}@", value)
left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
if left:
    sys.exit(f"template placeholders without a value: {', '.join(left)}")
open(sys.argv[2], "w").write(text)
PY
"$nginx" -t -q -e "$state/bridge-error.log" -p "$state" -c "$state/bridge.conf"
echo "operator bridge: flwr -> http://$listen -> https://$proxy (with operator.pem)" >&2
exec "$nginx" -e "$state/bridge-error.log" -p "$state" -c "$state/bridge.conf" -g "daemon off;"
