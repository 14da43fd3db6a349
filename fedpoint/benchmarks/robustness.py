"""Robustness benchmark: the coordinator's screens against honest and hostile sites, over many rounds.

A synthetic federation drives the real coordinator (`BankStrategy.aggregate_replies`, the bank
store on disk, the peer screens, rebasing into the general bank), round after round, with numpy
deltas instead of trained adapters, so 30 rounds of 5 sites take seconds.

The honest sites move as sites that train do: each modality has an optimum, each site its own
optimum near it (its data), and each round a site's delta is a fraction of the way from the bank it
received toward its optimum (uneven fractions: uneven data) plus noise. The deltas shrink as the
banks converge, until the noise dominates (the hardest case for screens that must not reject
honest sites). An honest site also sends an all-zero delta now and then.

Attacks (`ATTACKS`) replace some sites' deltas; the same sites behave honestly in the scenario's
honest twin, and the measure is each bank's displacement from that twin's bank relative to the
twin's whole movement: |bank - honest bank| / |honest bank - start|.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedpoint.server.banks import BankStore
from fedpoint.server.checks import Reply
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.registry import SiteEntry, SiteRegistry
from fedpoint.server.routing import GENERAL
from fedpoint.server.strategy import BankStrategy, SiteInfo
from fedpoint.shared.config import AdapterConfig
from fedpoint.shared.payload import state_schema
from fedpoint.shared.run_config import CoordinatorConfig, parse_run_config

FINGERPRINT = "synthetic-base"
SHAPES = {"norm.0.weight": (64,), "norm.0.bias": (64,), "norm.1.weight": (192,), "norm.1.bias": (192,)}
MODALITY_DISTANCE = 1.0  # |modality optimum - start|
SITE_OFFSET = 0.15       # |site optimum - modality optimum|
NOISE = 0.03             # |noise| in a site's delta per round
MAX_WEIGHT = 8.0         # the registry's max-weight of every site


@dataclass(frozen=True)
class Site:
    site_id: str
    modality: str
    step: float   # fraction of the way to its optimum per round
    weight: float  # accepted cases it reports


@dataclass(frozen=True)
class Scenario:
    sites: tuple[Site, ...]
    attackers: tuple[str, ...] = ()
    attack: str = ""
    zero_rounds: dict = field(default_factory=dict)  # site -> rounds in which it sends an all-zero delta


UNEVEN = (Site("mr-a", "MR", 0.25, 3), Site("mr-b", "MR", 0.15, 4), Site("ct-a", "CT", 0.3, 2))
MIXED = (Site("mr-a", "MR", 0.25, 3), Site("ct-a", "CT", 0.3, 2), Site("mr-b", "MR", 0.15, 4),
         Site("nuclei", "microscopy", 0.2, 3), Site("ct-b", "CT", 0.2, 3))  # the five: peer groups of 2, 2, 1
FIVE = tuple(Site(f"mr-{i}", "MR", step, weight) for i, (step, weight) in
             enumerate([(0.25, 3), (0.15, 2), (0.35, 4), (0.2, 3), (0.3, 2)], start=1))


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal(n)
    return v / np.linalg.norm(v)


# An attack: (its honest delta, a fixed direction of the attackers, rng) -> (delta, weight or None)
ATTACKS: dict[str, Callable] = {
    "censorship": lambda honest, v, rng: (0.01 * honest, None),           # 1% of their delta
    "collusion": lambda honest, v, rng: (4 * np.linalg.norm(honest) * v, MAX_WEIGHT),  # one direction, 4x, weight at the cap
    "slow-poisoning": lambda honest, v, rng: (honest + 1.7 * np.linalg.norm(honest) * v, None),  # +1.7x one direction
    "reverse": lambda honest, v, rng: (-1.9 * honest, None),               # -1.9x its own delta
}

SCENARIOS = {
    "honest-uneven": Scenario(UNEVEN, zero_rounds={"mr-b": (10, 20)}),
    "honest-five": Scenario(FIVE, zero_rounds={"mr-2": (12,)}),
    "censorship": Scenario(FIVE, ("mr-4", "mr-5"), "censorship"),
    "collusion": Scenario(FIVE, ("mr-4", "mr-5"), "collusion"),
    "slow-poisoning": Scenario(FIVE, ("mr-5",), "slow-poisoning"),
    "reverse": Scenario(FIVE, ("mr-5",), "reverse"),
    # beyond an honest majority of peers: each colluder has one honest peer (a pair has no majority)
    "honest-mixed": Scenario(MIXED, zero_rounds={"ct-b": (15,)}),
    "collusion-mixed": Scenario(MIXED, ("mr-b", "ct-b"), "collusion"),
}


def coordinator(root: Path, sites: tuple[Site, ...], **config) -> BankStrategy:
    """The real strategy on a fresh bank store, with the run config's defaults (and `config` on top)."""
    fed = parse_run_config({k.replace("_", "-"): v for k, v in config.items()}, reader=CoordinatorConfig)
    start = {name: np.zeros(shape, np.float32) + (1.0 if name.endswith("weight") else 0.0) for name, shape in SHAPES.items()}
    store = BankStore(root)
    store.init_bank(GENERAL, start, FINGERPRINT, "norm", AdapterConfig(kind="norm"))
    registry = SiteRegistry([SiteEntry(s.site_id, s.modality, node_id=i + 1, max_weight=MAX_WEIGHT)
                             for i, s in enumerate(sites)])
    strategy = BankStrategy(store, CoordinatorPolicy.from_config(fed), fingerprint=FINGERPRINT,
                            schema=state_schema(start), registry=registry)
    for i, site in enumerate(sites):
        strategy.sites[i + 1] = SiteInfo(site.site_id, site.modality)
    return strategy


def flat(state: dict) -> np.ndarray:
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in sorted(state)])


def run_scenario(scenario: Scenario, root: Path, rounds: int = 30, seed: int = 0, honest: bool = False,
                 **config) -> dict:
    """Run one federation; `honest=True` is its honest twin (the attackers behave). Returns each
    site's statuses per round, the banks' final states and their start."""
    rng = np.random.default_rng(seed)
    n = sum(int(np.prod(s)) for s in SHAPES.values())
    modality_goal = {m: MODALITY_DISTANCE * _unit(rng, n) for m in sorted({s.modality for s in scenario.sites})}
    site_goal = {s.site_id: modality_goal[s.modality] + SITE_OFFSET * _unit(rng, n) for s in scenario.sites}
    attack_direction = _unit(rng, n)
    strategy = coordinator(root, scenario.sites, **config)
    start = flat(strategy.store.latest(GENERAL).state)
    statuses: dict[str, list[str]] = {s.site_id: [] for s in scenario.sites}
    for rnd in range(1, rounds + 1):
        strategy.sent = {}
        noise = np.random.default_rng(seed * 1000 + rnd)
        parsed = {}
        for node, site in enumerate(scenario.sites, start=1):
            received = strategy.assign(node)
            position = flat(received) - start
            delta = site.step * (site_goal[site.site_id] - position) + NOISE * _unit(noise, n)
            weight = site.weight
            if rnd in scenario.zero_rounds.get(site.site_id, ()):
                delta = np.zeros(n)
            if not honest and site.site_id in scenario.attackers:
                delta, claimed = ATTACKS[scenario.attack](delta, attack_direction, noise)
                weight = claimed or weight
            sent = strategy.sent[node]
            parsed[node] = Reply(site.site_id, sent.bank, _unflat(delta, received), float(weight), FINGERPRINT,
                                 {"dice1": 0.5}, sent.version)
        strategy.aggregate_replies(rnd, parsed, {})
        entry = strategy.ledger.rounds[-1]
        for site in scenario.sites:
            statuses[site.site_id].append(entry.sites[site.site_id].status)
    banks = {b: flat(strategy.store.latest(b).state) for b in strategy.store.banks()}
    return {"statuses": statuses, "banks": banks, "start": start}


def _unflat(vector: np.ndarray, like: dict) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for k in sorted(like):
        size = like[k].size
        out[k] = vector[i:i + size].reshape(like[k].shape).astype(np.float32)
        i += size
    return {k: out[k] for k in like}


def displacement(attacked: dict, honest: dict) -> dict[str, float]:
    """Per bank: |bank - honest twin's bank| / |honest twin's bank - start|."""
    out = {}
    for bank, state in honest["banks"].items():
        moved = float(np.linalg.norm(state - honest["start"]))
        if bank in attacked["banks"] and moved > 0:
            out[bank] = round(float(np.linalg.norm(attacked["banks"][bank] - state)) / moved, 4)
    return out


def measure(name: str, rounds: int = 30, seed: int = 0, **config) -> dict:
    """One scenario and its honest twin: honest site-rounds rejected, attackers' statuses, displacement."""
    scenario = SCENARIOS[name]
    with tempfile.TemporaryDirectory() as tmp:
        attacked = run_scenario(scenario, Path(tmp) / "attacked", rounds, seed, **config)
        twin = run_scenario(scenario, Path(tmp) / "honest", rounds, seed, honest=True, **config) \
            if scenario.attackers else attacked
    honest_sites = [s.site_id for s in scenario.sites if s.site_id not in scenario.attackers]
    rejected = {s: attacked["statuses"][s].count("rejected") for s in honest_sites}
    result = {"rounds": rounds, "sites": len(scenario.sites),
              "honest_site_rounds": rounds * len(honest_sites),
              "honest_site_rounds_rejected": sum(rejected.values()),
              "honest_rejected_by_site": rejected}
    if scenario.attackers:
        result["attacker_rounds_accepted"] = {s: attacked["statuses"][s].count("accepted") for s in scenario.attackers}
        result["displacement"] = displacement(attacked, twin)
    return result


def run(rounds: int = 30, seeds: tuple[int, ...] = (0, 1, 2), **config) -> dict:
    """Every scenario over `seeds`; the worst displacement and the total honest rejections per scenario."""
    out = {"rounds": rounds, "seeds": list(seeds), "target": {"honest_site_rounds_rejected": 0, "displacement_max": 0.2},
           "scenarios": {}}
    for name in SCENARIOS:
        runs = [measure(name, rounds, seed, **config) for seed in seeds]
        summary = {"honest_site_rounds": sum(r["honest_site_rounds"] for r in runs),
                   "honest_site_rounds_rejected": sum(r["honest_site_rounds_rejected"] for r in runs)}
        if "displacement" in runs[0]:
            summary["displacement_worst"] = {b: max(r["displacement"].get(b, 0.0) for r in runs) for b in runs[0]["displacement"]}
            summary["attacker_rounds_accepted"] = [r["attacker_rounds_accepted"] for r in runs]
        out["scenarios"][name] = summary
    return out
