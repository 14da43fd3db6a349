#!/usr/bin/env bash
# Start the coordinator's proxy: nginx terminating TLS on the public address in front of the
# SuperLink on loopback (deploy/start-superlink.sh). It forwards /v1/fleet/ to the SuperLink for the
# SuperNodes, /v1/control/ only to a client presenting the operator's certificate, and refuses
# everything else (see deploy/nginx/proxy.conf.in).
#
#   deploy/start-proxy.sh CERTS_DIR STATE_DIR
#
# CERTS_DIR: ca.crt, superlink.pem, superlink.key, operator.pem (deploy/make-certs.sh).
# STATE_DIR: receives proxy.conf (generated from the template), the access log (one line per
# request: route, status, operator or not, bytes in and out), the error log and nginx's pid file.
# LISTEN (default 0.0.0.0:9092): the public address the sites use. UPSTREAM (default 127.0.0.1:9093):
# where the SuperLink listens (keep it on loopback). MAX_BODY (default 1g): the largest request.
# NGINX_BIN (default: nginx on PATH, else /usr/sbin/nginx).
# The script `exec`s nginx in the foreground, so its process id is nginx's master process.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 CERTS_DIR STATE_DIR" >&2
  exit 2
fi
certs=$(cd "$1" && pwd)
mkdir -p "$2"
state=$(cd "$2" && pwd)
for f in ca.crt superlink.pem superlink.key operator.pem; do
  [[ -f "$certs/$f" ]] || { echo "missing $certs/$f (run deploy/make-certs.sh)" >&2; exit 2; }
done
nginx=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x "$nginx" ]] || { echo "no nginx (install Debian's package: apt-get install nginx)" >&2; exit 2; }
upstream=${UPSTREAM:-127.0.0.1:9093}
case "$upstream" in
  127.*|localhost:*|"[::1]":*) ;;
  *) echo "UPSTREAM=$upstream: the SuperLink must listen on loopback behind the proxy" >&2; exit 2 ;;
esac
# The operator certificate's subject, as nginx reports a client's ($ssl_client_s_dn, RFC 2253).
operator_dn=$(openssl x509 -in "$certs/operator.pem" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')

mkdir -p "$state/tmp"
python=${PYTHON:-python3}
"$python" - "$(dirname "$0")/nginx/proxy.conf.in" "$state/proxy.conf" <<PY
import re, sys
text = open(sys.argv[1]).read()
values = {"LISTEN": "${LISTEN:-0.0.0.0:9092}", "UPSTREAM": "$upstream", "CERTS": "$certs", "STATE": "$state",
          "OPERATOR_DN": """$operator_dn""", "MAX_BODY": "${MAX_BODY:-1g}"}
for key, value in values.items():
    if re.search(r'["\\\\\n;{}]', value):
        sys.exit(f"{key}={value!r}: quotes, backslashes, newlines, ';' and braces are not allowed")
    text = text.replace(f"@{key}@", value)
left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
if left:
    sys.exit(f"template placeholders without a value: {', '.join(left)}")
open(sys.argv[2], "w").write(text)
PY
"$nginx" -t -q -e "$state/proxy-error.log" -p "$state" -c "$state/proxy.conf"
echo "proxy: ${LISTEN:-0.0.0.0:9092} -> $upstream (config $state/proxy.conf)" >&2
exec "$nginx" -e "$state/proxy-error.log" -p "$state" -c "$state/proxy.conf" -g "daemon off;"
