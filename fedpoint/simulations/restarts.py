"""Coordinator restarts at named points: a simulated federation whose ServerApp is killed again and
again (`FEDPOINT_CRASH_AT`, `fedpoint.server.crashpoints`), each kill followed by a one-round
resume, with checks that no round is lost, repeated or misreported.

After a kill at `round-start`, `before-commit` or `mid-commit` of round r the round did not commit,
so the resume runs round r again; after `after-commit`, `after-ledger` or `after-evaluate` it did,
so the resume runs r + 1. Either way each resume must report exactly that one round, and at the end
the journal and federation.json must each hold rounds 1..N once, with the same versions, and every
bank's versions must form one chain (each the child of the one before, rounds increasing).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

from fedpoint.server.crashpoints import CRASH_ENV, CRASH_EXIT_CODE, POINTS
from fedpoint.server.ledger import read_rounds
from fedpoint.shared.run_config import SimulationConfig, parse_run_config
from fedpoint.simulations.flower_sim import resume_point, run_federation

COMMITTED = frozenset({"after-commit", "after-ledger", "after-evaluate"})  # the round is in the journal


def random_kills(kills: int, seed: int = 0, points: tuple = POINTS) -> list[tuple[str, int]]:
    """`kills` (point, k) pairs: kill at `point` in the k-th (1 or 2) round of a run."""
    rng = random.Random(seed)
    return [(rng.choice(points), rng.randint(1, 2)) for _ in range(kills)]


def kill_and_resume(config: Mapping, kills: list[tuple[str, int]], *, num_sites: int = 2,
                    timeout: float = 900.0) -> list[dict]:
    """For each (point, k) of `kills`: run two rounds and kill the coordinator at `point` of the
    run's k-th round, then resume one round. Returns one record per kill; raises AssertionError at
    the first round lost, repeated or misreported."""
    fed = parse_run_config(config, reader=SimulationConfig)
    records = []
    for point, k in kills:
        start = resume_point(fed)
        at = start + k
        code = _crashed_run({**config, "num-server-rounds": 2}, f"{point}:{at}", num_sites, timeout)
        expected = at if point in COMMITTED else at - 1
        after = resume_point(fed)
        if after != expected:
            raise AssertionError(f"killed at {point} of round {at}: the coordinator would resume after round {after}, "
                                 f"not {expected}")
        summary = run_federation({**config, "num-server-rounds": 1}, num_sites, timeout=timeout)
        if summary["round_numbers"] != [expected + 1]:
            raise AssertionError(f"killed at {point} of round {at}: the resume reported rounds "
                                 f"{summary['round_numbers']}, not [{expected + 1}]")
        records.append({"point": point, "round": at, "exit_code": code, "resumed_after": after,
                        "reported": summary["round_numbers"]})
        check_history(fed)
    return records


def _crashed_run(config: Mapping, crash_at: str, num_sites: int, timeout: float) -> int:
    saved = os.environ.get(CRASH_ENV)
    os.environ[CRASH_ENV] = crash_at  # the simulation's process inherits it
    try:
        run_federation(config, num_sites, timeout=timeout)
    except RuntimeError as err:
        if f"exit code {CRASH_EXIT_CODE}" not in str(err):
            raise
        return CRASH_EXIT_CODE
    finally:
        if saved is None:
            os.environ.pop(CRASH_ENV, None)
        else:
            os.environ[CRASH_ENV] = saved
    raise AssertionError(f"{CRASH_ENV}={crash_at}: the run finished without reaching its crash point")


def check_history(fed: SimulationConfig) -> None:
    """Journal and federation.json: rounds 1..N once each, the same versions; banks: unbroken chains."""
    from fedpoint.server.banks import BankStore

    store = BankStore(fed.bank_store_path, create=False)
    journal = store.journal()
    journaled = [j["round"] for j in journal]
    ledger = read_rounds(fed.output_path)
    recorded = [r["round"] for r in ledger]
    last = max(journaled, default=0)
    if journaled != list(range(1, last + 1)) or recorded != journaled:
        raise AssertionError(f"rounds lost or repeated: journal {journaled}, federation.json {recorded}")
    for j, r in zip(journal, ledger):
        if j.get("versions", {}) != r.get("versions", {}):
            raise AssertionError(f"round {j['round']}: journal versions {j.get('versions')}, federation.json {r.get('versions')}")
    written = {}
    for j in journal:
        for bank, version in j.get("versions", {}).items():
            written.setdefault(bank, []).append(version)
    for bank in store.banks():
        versions = store.versions(bank)
        manifests = [store.get(bank, v).manifest for v in versions]
        rounds = [int(m.get("round") or 0) for m in manifests]
        if rounds != sorted(set(rounds)) or any(m.get("parent") not in (None, v - 1) for m, v in zip(manifests, versions)):
            raise AssertionError(f"bank {bank}: versions {versions} of rounds {rounds} are not one chain")
        if [v for v in versions if int(store.get(bank, v).manifest.get("round") or 0) > 0] != written.get(bank, []):
            raise AssertionError(f"bank {bank}: versions {versions} on disk, the journal wrote {written.get(bank)}")
