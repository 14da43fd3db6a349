"""The coordinator's site registry: who each authenticated node is.

A site's id and modality are what this registry says for its node, never what a reply claims.
In deployment, `deploy/register-sites.sh` registers each site's public key with the SuperLink
(which then authenticates that node by its key and gives it a node id) and records the entry here:

    {"sites": [{"site-id": "hospital-a", "modality": "MR", "node-id": 123456,
                "public-key-sha256": "...", "max-weight": 500}]}

`max-weight` (optional) caps the aggregation weight the site's replies may carry.

In simulation there are no keys: the partition plays the node. The registry is then the sites
config's names (`from_site_names`), and the first node that names a site is bound to it for the
run; a second node naming the same site, or a name the config does not have, is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fedpoint.shared.fileio import write_json_atomic
from fedpoint.shared.protocol import check_modality, check_site_id


@dataclass(frozen=True)
class SiteEntry:
    site_id: str
    modality: str | None  # None: not known to the coordinator (simulation: the site's dataset says)
    node_id: int | None = None
    public_key_sha256: str | None = None
    max_weight: float | None = None


class SiteRegistry:
    def __init__(self, entries: list[SiteEntry], bind_by_name: bool = False):
        self.entries = list(entries)
        self.bind_by_name = bind_by_name  # simulation: nodes are bound to site names on first claim
        self.bound: dict[int, SiteEntry] = {e.node_id: e for e in entries if e.node_id is not None}
        ids = [e.site_id for e in entries]
        if len(ids) != len(set(ids)):
            raise ValueError("site registry: a site id appears twice")

    @classmethod
    def load(cls, path: str | Path) -> "SiteRegistry":
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"site registry {path}: cannot read it ({err})") from None
        entries = []
        for i, item in enumerate(data.get("sites", [])):
            try:
                entries.append(SiteEntry(check_site_id(item["site-id"]), check_modality(item["modality"]),
                                         int(item["node-id"]) if item.get("node-id") is not None else None,
                                         item.get("public-key-sha256"),
                                         float(item["max-weight"]) if item.get("max-weight") is not None else None))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"site registry {path}: sites[{i}]: {err}") from None
        return cls(entries)

    @classmethod
    def from_site_names(cls, names: list[str]) -> "SiteRegistry":
        return cls([SiteEntry(check_site_id(n), None) for n in names], bind_by_name=True)

    def resolve(self, node_id: int, claimed_site: str, claimed_modality: str) -> SiteEntry:
        """The registry's entry for this node, checked against its claims; ValueError says why not."""
        entry = self.bound.get(node_id)
        if entry is None and self.bind_by_name:
            entry = next((e for e in self.entries if e.site_id == claimed_site), None)
            if entry is None:
                raise ValueError(f"node {node_id} claims site {claimed_site!r}, which the registry does not have")
            holder = next((n for n, e in self.bound.items() if e.site_id == claimed_site), None)
            if holder is not None:
                raise ValueError(f"node {node_id} claims site {claimed_site!r}, which is node {holder}")
            self.bound[node_id] = entry
        if entry is None:
            raise ValueError(f"node {node_id} is not in the site registry")
        if claimed_site != entry.site_id:
            raise ValueError(f"node {node_id} is site {entry.site_id!r} in the registry but claims {claimed_site!r}")
        if entry.modality is not None and claimed_modality != entry.modality:
            raise ValueError(f"node {node_id} (site {entry.site_id!r}) is {entry.modality!r} in the registry but "
                             f"claims {claimed_modality!r}")
        return entry

    def max_weights(self) -> dict[str, float]:
        return {e.site_id: e.max_weight for e in self.entries if e.max_weight}


def public_key_sha256(public_key_text: str) -> str:
    """sha256 of an OpenSSH public key's base64 body (the comment is ignored)."""
    parts = public_key_text.split()
    return hashlib.sha256((parts[1] if len(parts) > 1 else public_key_text.strip()).encode()).hexdigest()


def add_entry(path: str | Path, site_id: str, modality: str, node_id: int, public_key_file: str | Path,
              max_weight: float | None = None) -> dict:
    """Add or replace one site's entry (used by deploy/register-sites.sh); written atomically."""
    path = Path(path).expanduser()
    data = json.loads(path.read_text()) if path.exists() else {"sites": []}
    entry = {"site-id": check_site_id(site_id), "modality": check_modality(modality), "node-id": int(node_id),
             "public-key-sha256": public_key_sha256(Path(public_key_file).read_text())}
    if max_weight:
        entry["max-weight"] = float(max_weight)
    data["sites"] = [s for s in data.get("sites", []) if s.get("site-id") != site_id and s.get("node-id") != int(node_id)]
    data["sites"].append(entry)
    write_json_atomic(path, data, indent=1)
    return entry


def main(argv: list[str] | None = None) -> int:
    """python -m fedpoint.server.registry add REGISTRY SITE_ID MODALITY NODE_ID PUBLIC_KEY [MAX_WEIGHT]"""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (6, 7) or args[0] != "add":
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        entry = add_entry(args[1], args[2], args[3], int(args[4]), args[5], float(args[6]) if len(args) == 7 else None)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
