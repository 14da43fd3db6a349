"""The federation's round ledger: one typed record per round, kept in `<output-dir>/federation.json`.

The file holds `{"rounds": [...]}`, one entry per federation round: when it ran, what each node
was sent and what became of its reply (`SiteRound`), the bank versions the round wrote, the DP
settings it ran under, and the federated evaluation round's scores (added once they are in).
Rounds the bank store committed but the file missed (a crash in between) are restored from the
store's journal, where the strategy writes each round's entry with its versions.

Light: no Flower, no torch; reports and the simulation runner read the file through `read_rounds`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fedpoint.shared.fileio import write_json_atomic

SUMMARY_FILE = "federation.json"


class SiteRound(BaseModel):
    """One node's part in a round. A node whose identity was refused has only node, status, reason."""

    # Only the fields given are written (exclude_unset), in this order, as the file has always held them.
    model_config = ConfigDict(extra="allow")

    node: int
    modality: str | None = None
    bank: str | None = None
    bank_version: int | None = None
    bytes_down: int | None = None
    bytes_up: int | None = None
    weight: float | None = None
    status: str
    reason: str | None = None
    metrics: dict[str, Any] | None = None  # Any: an int metric stays an int in the file
    # also, when they apply: task (the task sent), tasks (a site of several: all it declares),
    # route (why this bank, and why this task), note (what the screens did)


class RoundRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    round: int
    time: float
    sites: dict[str, SiteRound]
    versions: dict[str, int]
    dp: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # {"banks": {...}, "sites": {...}}, once scored

    def as_json(self) -> dict:
        return self.model_dump(mode="python", exclude_unset=True)


def read_rounds(path: str | Path | None) -> list[dict]:
    """The rounds of a federation.json (or of the one in a folder), as plain dicts; [] when absent."""
    if path is None:
        return []
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("rounds", []))


def last_round(journal: Iterable[Mapping], rounds: Iterable[Mapping]) -> int:
    """The federation's last round: the highest round number in the bank store's journal (every
    round a coordinator finished commits an entry there, with or without new versions) or in
    federation.json (`rounds`); 0 before the first. A restarted coordinator runs the round after
    it, and a run reports the rounds after the last round there was when it started."""
    return max([int(j.get("round") or 0) for j in journal] + [int(r.get("round") or 0) for r in rounds] + [0])


class RoundLedger:
    """The rounds of one federation, written atomically to `path` after every change (None: kept
    in memory only)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.rounds: list[RoundRecord] = [RoundRecord.model_validate(r) for r in read_rounds(self.path)]

    def as_json(self) -> list[dict]:
        """What federation.json holds under "rounds"."""
        return [r.as_json() for r in self.rounds]

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {"rounds": self.as_json()}, indent=1, default=float)

    def record(self, entry: RoundRecord) -> None:
        """Add a round (replacing an earlier entry of the same round number) and save."""
        self.rounds = [r for r in self.rounds if r.round != entry.round] + [entry]
        self.save()

    def rounds_sent(self, site_id: str) -> int:
        """How many rounds sent `site_id` a bank to work on (its own round count: a site of several
        tasks takes them in turn by it, `routing.task_in_turn`)."""
        return sum(1 for r in self.rounds if (row := r.sites.get(site_id)) is not None and row.bank is not None)

    def add_evaluation(self, fed_round: int, banks: Mapping, sites: Mapping) -> None:
        """The federated evaluation round's scores, into the entry of the round they follow; saved."""
        for entry in self.rounds:
            if entry.round == fed_round:
                entry.evaluation = {"banks": dict(banks), "sites": dict(sites)}
        self.save()

    def restore(self, journal: Iterable[Mapping]) -> list[int]:
        """Add back the rounds of the store's journal that the file lacks (saved if any); returns their numbers."""
        known = {r.round for r in self.rounds}
        added = [RoundRecord.model_validate(j["summary"]["entry"] | {"versions": j.get("versions", {})})
                 for j in journal if (j.get("summary") or {}).get("entry") and j.get("round") not in known]
        if added:
            self.rounds = sorted(self.rounds + added, key=lambda r: r.round)
            self.save()
        return [r.round for r in added]
