"""Named points in a coordinator round where a test (or an operator rehearsing a failure) makes the
ServerApp die hard: `FEDPOINT_CRASH_AT=<point>[:<federation round>]` in the ServerApp's
environment. At that point the process exits at once (`os._exit`, no cleanup, no flush: what a
power cut or `kill -9` does), so restart accounting is tested at a known moment, not at a time.

Points, in the order a round passes them (`POINTS`):
- `round-start`: sites sampled, nothing sent;
- `before-commit`: replies aggregated, nothing written;
- `mid-commit`: inside the bank store's round commit, after the first bank's version was written
  (the journal entry is still pending, so the restart rolls the round back);
- `after-commit`: the round committed in the bank store's journal, federation.json not yet written;
- `after-ledger`: federation.json holds the round, the evaluation round not yet run;
- `after-evaluate`: the evaluation round's scores recorded.

Unset (the normal case) costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import sys

CRASH_ENV = "FEDPOINT_CRASH_AT"
CRASH_EXIT_CODE = 86  # what a run killed at a crash point exits with
POINTS = ("round-start", "before-commit", "mid-commit", "after-commit", "after-ledger", "after-evaluate")


def parse_crash_at(value: str) -> tuple[str, int | None]:
    """("point", round or None) from `point[:round]`; ValueError naming the points."""
    point, _, fed_round = value.strip().partition(":")
    if point not in POINTS:
        raise ValueError(f"{CRASH_ENV}={value!r}: unknown point {point!r}; use one of {', '.join(POINTS)}, "
                         "optionally followed by :ROUND")
    if fed_round and not fed_round.isdigit():
        raise ValueError(f"{CRASH_ENV}={value!r}: the round after ':' must be a whole number")
    return point, int(fed_round) if fed_round else None


def crash_point(point: str, fed_round: int) -> None:
    """Exit the process now if `FEDPOINT_CRASH_AT` names this point (and this round, if it names one)."""
    value = os.environ.get(CRASH_ENV)
    if not value:
        return
    wanted, wanted_round = parse_crash_at(value)
    if wanted == point and wanted_round in (None, fed_round):
        print(f"fedpoint: {CRASH_ENV}: exiting at {point} of round {fed_round}", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_CODE)
