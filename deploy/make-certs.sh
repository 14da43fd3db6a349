#!/usr/bin/env bash
# Make the consortium's TLS material and one SuperNode key per site.
#
#   deploy/make-certs.sh OUT_DIR SITE_ID [SITE_ID ...]
#
# Writes, into OUT_DIR:
#   ca.crt, ca.key                 the consortium CA (keep ca.key offline; give ca.crt to every site)
#   superlink.pem, superlink.key   the SuperLink's TLS certificate, signed by the CA (the proxy in
#                                  front of it, deploy/start-proxy.sh, presents the same one)
#   operator.pem, operator.key     the operator's client certificate (CN "fedpoint operator"): the
#                                  proxy forwards the Control API only to a client that presents it
#   sites/<SITE_ID>, .pub          one ECDSA P-384 key pair per site (OpenSSH format); the site keeps
#                                  the private key, the coordinator registers the .pub
# The certificate names 127.0.0.1 and localhost; add the coordinator's real names with
#   SUPERLINK_SAN="DNS:fl.example.org,IP:10.0.0.5" deploy/make-certs.sh ...
# Key sizes: CA_BITS (default 4096), DAYS (default 365).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 OUT_DIR SITE_ID [SITE_ID ...]" >&2
  exit 2
fi
out=$1
shift
bits=${CA_BITS:-4096}
days=${DAYS:-365}
san="IP:127.0.0.1,IP:::1,DNS:localhost${SUPERLINK_SAN:+,$SUPERLINK_SAN}"

mkdir -p "$out/sites"
umask 077

if [[ ! -f "$out/ca.crt" ]]; then
  openssl req -x509 -newkey "rsa:$bits" -nodes -sha256 -days "$days" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=fedpoint consortium CA" 2>/dev/null
  echo "made CA $out/ca.crt"
fi

if [[ ! -f "$out/superlink.pem" ]]; then
  openssl req -newkey "rsa:$bits" -nodes -sha256 -keyout "$out/superlink.key" -out "$out/superlink.csr" \
    -subj "/CN=fedpoint superlink" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" > "$out/superlink.ext"
  openssl x509 -req -sha256 -days "$days" -in "$out/superlink.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/superlink.pem" -extfile "$out/superlink.ext" 2>/dev/null
  rm -f "$out/superlink.csr" "$out/superlink.ext"
  echo "made SuperLink certificate $out/superlink.pem ($san)"
fi

if [[ ! -f "$out/operator.pem" ]]; then
  openssl req -newkey "rsa:$bits" -nodes -sha256 -keyout "$out/operator.key" -out "$out/operator.csr" \
    -subj "/CN=fedpoint operator" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > "$out/operator.ext"
  openssl x509 -req -sha256 -days "$days" -in "$out/operator.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/operator.pem" -extfile "$out/operator.ext" 2>/dev/null
  rm -f "$out/operator.csr" "$out/operator.ext"
  echo "made operator client certificate $out/operator.pem (CN=fedpoint operator)"
fi

for site in "$@"; do
  if [[ ! "$site" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]]; then
    echo "invalid site id '$site': use letters, digits, '.', '_' or '-'" >&2
    exit 2
  fi
  if [[ ! -f "$out/sites/$site" ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedpoint site $site" -f "$out/sites/$site"
    echo "made key pair $out/sites/$site(.pub)"
  fi
done
chmod 644 "$out/ca.crt" "$out/superlink.pem" "$out/operator.pem" "$out"/sites/*.pub 2>/dev/null || true
