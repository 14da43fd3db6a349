#!/usr/bin/env bash
# Register sites' public keys with the SuperLink, so their SuperNodes may connect (the SuperLink runs
# with --enable-supernode-auth: an unregistered key is refused), and record each site in the
# coordinator's site registry: node id (the SuperLink's, bound to the key) -> site id and modality.
# The coordinator takes a site's id and modality from this registry, never from a reply.
#
#   deploy/register-sites.sh CONNECTION REGISTRY SITE_KEY.pub=MODALITY[:MAX_WEIGHT] [...]
#
# CONNECTION is a [superlink.NAME] entry of $FLWR_HOME/config.toml (deploy/add-connection.sh).
# REGISTRY is the JSON file the run config's `site-registry` names (created or updated).
# The site id is the key file's name (certs/sites/hospital-a.pub -> hospital-a). MAX_WEIGHT, if
# given, caps the aggregation weight (cases) that site's replies may carry.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 CONNECTION REGISTRY SITE_KEY.pub=MODALITY[:MAX_WEIGHT] [...]" >&2
  exit 2
fi
connection=$1
registry=$2
shift 2
python=${PYTHON:-python3}
for spec in "$@"; do
  key=${spec%%=*}
  rest=${spec#*=}
  [[ "$spec" == *=* && -n "$rest" ]] || { echo "give each key as KEY.pub=MODALITY, got '$spec'" >&2; exit 2; }
  modality=${rest%%:*}
  max_weight=""
  [[ "$rest" == *:* ]] && max_weight=${rest#*:}
  [[ -f "$key" ]] || { echo "no public key $key" >&2; exit 2; }
  name=$(basename "$key" .pub)
  out=$(flwr supernode register "$key" "$connection" --name "$name" --format json)
  node_id=$(printf '%s' "$out" | "$python" -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.index("{"):])["node-id"])')
  "$python" -m fedpoint.server.registry add "$registry" "$name" "$modality" "$node_id" "$key" ${max_weight:+"$max_weight"}
done
