#!/usr/bin/env bash
# Start a site's SuperNode from its site config (see deploy/example-site.toml).
#
#   deploy/start-site.sh SITE_TOML
#
# The SuperNode connects to the SuperLink over TLS (the consortium CA), authenticates with the
# site's private key, and gives every ClientApp it starts the node config
#   site-id, modality, site-store
#   and, when the site file sets them, device (cpu, cuda, cuda:N or auto), task (the structure it
#   labels) or tasks (several: a list, given to the ClientApp comma-separated)
# The site store is the one the site's annotation service writes (`fedpoint site serve`): the
# ClientApp trains on its annotation cache and leaves each received bank there. A device this
# machine does not have (cuda without a GPU that torch sees) stops the script here, before the
# SuperNode starts.
# The script `exec`s the SuperNode, so its process id is the SuperNode's.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 SITE_TOML" >&2
  exit 2
fi
python=${PYTHON:-python3}
# The site file, read and checked; a bad one stops the script here (set -e on the assignment).
settings=$("$python" - "$1" <<'PY'
import pathlib, shlex, sys, tomllib

path = pathlib.Path(sys.argv[1])
site = tomllib.loads(path.read_text())
required = ("site-id", "modality", "site-store", "superlink", "root-certificates", "private-key")
missing = [k for k in required if k not in site]
if missing:
    sys.exit(f"{path}: missing {', '.join(missing)}")
def local(key):  # paths in the file are relative to the file
    return str((path.parent / str(site[key])).expanduser().resolve())
node_config = f'site-id="{site["site-id"]}" modality="{site["modality"]}" site-store="{local("site-store")}"'
if "device" in site:  # checked now: a missing GPU fails the start, not every round
    from fedpoint.shared.device import resolve_device
    try:
        resolve_device(str(site["device"]))
    except ValueError as err:
        sys.exit(f"{path}: device: {err}")
    node_config += f' device="{site["device"]}"'
for key in ("task", "tasks"):  # the structures it labels (one name; a list), checked now: a bad name fails the start
    if key in site:
        from fedpoint.shared.tasks import normalise_tasks
        names = [site[key]] if key == "task" else site[key]
        try:
            if not isinstance(names, list):
                raise ValueError('a list of structure names, e.g. ["liver", "lesion"]')
            normalise_tasks(names)
        except ValueError as err:
            sys.exit(f"{path}: {key}: {err}")
        node_config += f' {key}="{",".join(names)}"'
values = {
    "SUPERLINK": site["superlink"], "ROOT_CERTS": local("root-certificates"), "PRIVATE_KEY": local("private-key"),
    "NODE_CONFIG": node_config, "RUNTIME_PORT": str(site.get("port", 9094)), "SITE_STORE": local("site-store"),
    "SITE_FLWR_HOME": local("flwr-home") if "flwr-home" in site else local("site-store") + "/.flwr",
}
print(" ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()))
PY
)
eval "$settings"

mkdir -p "$SITE_STORE" "$SITE_FLWR_HOME"
export FLWR_HOME=$SITE_FLWR_HOME  # each SuperNode keeps its installed apps apart
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}
exec flower-supernode \
  --superlink "$SUPERLINK" \
  --root-certificates "$ROOT_CERTS" \
  --auth-supernode-private-key "$PRIVATE_KEY" \
  --node-config "$NODE_CONFIG" \
  --port "$RUNTIME_PORT" \
  --max-wait-time "${MAX_WAIT_TIME:-600}"
