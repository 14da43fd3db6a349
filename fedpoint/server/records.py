"""The typed records of a coordinator round: who a node is, what it was sent, its reply, what became of it.

A `Reply` measures its delta's L2 norm once (`Reply.norm`) and keeps it while the delta is the
same object: a reply whose weight is lowered keeps its norm, one whose delta is clipped or rebased
(a new delta) measures the new one, once. Light: numpy only (no Flower, no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def delta_norm(delta: dict[str, np.ndarray]) -> float:
    """L2 norm over every array of a delta, accumulated in float64."""
    return math.sqrt(sum(float(np.square(np.asarray(a, dtype=np.float64)).sum()) for a in delta.values()))


@dataclass
class Reply:
    """One site's answer for one round.

    `bank` is the bank the site received and `delta` is relative to (its trained adapter state
    minus that bank's state); `weight` is the number of accepted cases it trained on; `task` the
    task it was sent and trained (normalised; None: the default task), whose banks it may update.
    """

    site_id: str
    bank: str
    delta: dict[str, np.ndarray]
    weight: float
    fingerprint: str
    metrics: dict = field(default_factory=dict)
    bank_version: int | None = None
    task: str | None = None
    _measured: tuple | None = field(default=None, repr=False, compare=False)  # (the delta measured, its norm)

    @property
    def norm(self) -> float:
        """The delta's L2 norm (`delta_norm`), computed once per delta object."""
        if self._measured is None or self._measured[0] is not self.delta:
            self._measured = (self.delta, delta_norm(self.delta))
        return self._measured[1]

    @property
    def source(self) -> tuple[str, int | None]:
        """(bank, version) the site trained from: the state its delta is relative to."""
        return self.bank, self.bank_version


Rejection = tuple[Reply, str]


@dataclass(frozen=True)
class SiteInfo:
    """Who a node is: its site id, modality and declared tasks (normalised; None: the default task).
    `tasks` lists every task the site declares, its primary one (`task`) first; a site of one task
    may give `task` alone, and `tasks` is then (task,)."""

    site_id: str
    modality: str
    task: str | None = None
    tasks: tuple[str | None, ...] = ()

    def __post_init__(self):
        # `task` given: it is the primary, first (each task once); else the first of `tasks` is
        tasks = self.tasks if self.task is None and self.tasks else tuple(dict.fromkeys((self.task, *self.tasks)))
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "task", tasks[0])


@dataclass(frozen=True)
class Sent:
    """What one node was sent this round."""

    bank: str
    version: int
    nbytes: int
    route: str = ""  # why this bank (routing.route), and for a site of several tasks why this task
    task: str | None = None  # the task the site is to work on (normalised; None: the default task)


@dataclass(frozen=True)
class Outcome:
    """What became of one node's reply: accepted, rejected (with why), failed, no reply, skipped."""

    status: str
    reason: str | None = None
    reply: Reply | None = None
    note: str | None = None  # what the screens did to an accepted reply (clipped, no weight, re-admitted)


@dataclass(frozen=True)
class BankUpdate:
    """One target bank's part of a round: the state it is aggregated on (`base`, a (bank, version)
    key: the bank's latest version, or for a new bank the one its first sites trained from), the
    replies rebased onto that state, and the aggregated update (new state - base state)."""

    bank: str
    base: tuple[str, int]
    base_state: dict[str, np.ndarray]
    replies: list[Reply]   # as accepted (relative to what each trained from)
    rebased: list[Reply]   # the same replies relative to `base_state`
    update: dict[str, np.ndarray]
    exists: bool           # False: the round creates this bank


@dataclass
class RoundPlan:
    """A round between aggregation and commit: what was accepted, each node's outcome, and each
    target bank's update (the commit writes base + update, after Flower's DP noise when it runs)."""

    server_round: int
    accepted: list[Reply]
    outcomes: dict[int, Outcome]
    updates: dict[str, BankUpdate] = field(default_factory=dict)
