"""A site's part of one federation round, free of Flower types (the ClientApp wraps it).

The site loads its frozen base (and refuses a bank made on another base), keeps the received bank
in its store for the annotation service, trains from the bank, and answers with the adapter delta,
its weight (accepted cases) and a few numeric means. Training is what the site would do anyway:

- deployment (node config names a site store): one CLoPA episode on the site's annotation cache;
- simulation (Flower gives a partition id): the site annotates the next images of its stream with
  the simulated user, with mid- and post-interaction updates, through the same engine a real site
  uses. The stream position lives in the site store, so the next round continues where this one
  stopped.

The reply is checked once, on its way out, by the ClientApp's `egress_mod`
(`fedpoint.client.client_app.check_reply`): adapter parameters of the expected names, shapes and
dtypes, allowed numeric metrics and the site's id fields, nothing else.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedpoint.client import splits as episode_splits
from fedpoint.client.site_store import SiteStore, check_id
from fedpoint.shared import protocol as P
from fedpoint.shared.config import AdaptationConfig
from fedpoint.shared.device import DEFAULT_DEVICE
from fedpoint.shared.fileio import write_json_atomic
from fedpoint.shared.payload import from_numpy, to_numpy
from fedpoint.shared.run_config import SiteRoundConfig
from fedpoint.shared.tasks import DEFAULT_TASK

STREAM_FILE = "federation-stream.json"


@dataclass(frozen=True)
class SiteIdentity:
    site_id: str
    modality: str
    store: Path
    partition: int | None = None  # simulation only
    task: str | None = None  # the structure it labels or works on this round (normalised); None: the default task
    tasks: tuple[str | None, ...] = ()  # a site of several tasks: all it declares, its primary first

    @property
    def declared(self) -> tuple[str | None, ...]:
        """Every task the site declares, its primary first."""
        return self.tasks or (self.task,)

    def on_task(self, task: str | None) -> "SiteIdentity":
        """The site working on `task`, an instruction's (None: its primary task); ValueError for a
        task it does not declare."""
        name = self.declared[0] if task is None else _task(task)
        if name not in self.declared:
            raise ValueError(f"site {self.site_id} was asked for task {task!r}, which it does not declare "
                             f"({', '.join(t or 'default' for t in self.declared)})")
        return replace(self, task=name)

    def answer(self) -> dict:
        """Who the site is, as its identity answer says it: id, modality, its primary task (when
        not the default) and, for a site of several, every task it declares."""
        primary = self.declared[0]
        return ({P.SITE_ID: self.site_id, P.MODALITY: self.modality} | ({P.TASK: primary} if primary else {})
                | ({P.TASKS: [t or DEFAULT_TASK for t in self.declared]} if len(self.declared) > 1 else {}))

    @property
    def task_store(self) -> SiteStore:
        """The store of the site's task (the root store for the default task)."""
        return SiteStore(self.store).for_task(self.task)

    @property
    def simulated(self) -> bool:
        return self.partition is not None


@dataclass
class SiteReply:
    arrays: dict[str, np.ndarray]  # the delta, in the order the bank arrived
    metrics: dict[str, float]
    config: dict[str, str | int]


# ------------------------------------------------------------------------------ who am I
def identify(node_config: Mapping, fed: SiteRoundConfig) -> SiteIdentity:
    """Deployment: site id, modality and store from the node config. Simulation: the site of the
    sites config that Flower's partition id points at."""
    if P.NODE_SITE_ID in node_config:
        missing = [k for k in (P.NODE_MODALITY, P.NODE_SITE_STORE) if not node_config.get(k)]
        if missing:
            raise ValueError(f"node config of site {node_config[P.NODE_SITE_ID]!r} lacks {', '.join(missing)}")
        site_id = check_id(str(node_config[P.NODE_SITE_ID]), "site id")
        store = Path(str(node_config[P.NODE_SITE_STORE])).expanduser()
        return SiteIdentity(site_id, str(node_config[P.NODE_MODALITY]), store,
                            **declared_tasks(node_config.get(P.NODE_TASK), node_config.get(P.NODE_TASKS)))
    if P.PARTITION_ID in node_config:
        partition = int(node_config[P.PARTITION_ID])
        site = simulated_site(fed.sites_config, partition, fed.size, fed.sample_dims(base_dims(fed.base)), fed.site_streams)
        return SiteIdentity(site.name, site.modality, fed.simulated_site_store(site.name), partition,
                            **declared_tasks(site.spec.task, site.spec.tasks))
    raise ValueError(f"node config needs {P.NODE_SITE_ID!r}, {P.NODE_MODALITY!r} and {P.NODE_SITE_STORE!r} "
                     f"(deployment) or Flower's {P.PARTITION_ID!r} (simulation); got {sorted(node_config)}")


def _task(name) -> str | None:
    from fedpoint.shared.tasks import normalise_task

    task = normalise_task(None if name is None else str(name))
    return None if task == DEFAULT_TASK else task


def declared_tasks(task, tasks) -> dict:
    """SiteIdentity's task fields from a declaration: `task` alone (one task), or `tasks` (a list,
    or comma-separated names) with `task`, when given, as the primary; ValueError for a bad name."""
    from fedpoint.shared.tasks import normalise_tasks

    if tasks is None or (isinstance(tasks, str) and not tasks.strip()):
        return {"task": _task(task)}
    named = [_task(t) for t in normalise_tasks(tasks)]
    every = tuple(dict.fromkeys([_task(task) if task is not None else named[0], *named]))
    return {"task": every[0], "tasks": every if len(every) > 1 else ()}


def base_dims(spec: str | Path) -> int:
    """2 or 3: whether the federation's base annotates images and slices or whole volumes."""
    from fedpoint.shared.bases import base_config, locate_base

    return base_config(locate_base(spec)).spatial_dims


@functools.lru_cache(maxsize=8)
def simulated_site(sites_config: str, partition: int, size: int, spatial_dims: int = 2, streams: str = ""):
    """The `partition`-th site of a sites config, once per process (Ray actors are reused): the
    stream the experiment runner built, when `streams` holds it, else built here; with a 3D base
    its samples are whole volumes."""
    from fedpoint.configs import resolve_config
    from fedpoint.data import build_site, load_site_specs, load_site_stream

    specs = load_site_specs(resolve_config(sites_config))
    if not 0 <= partition < len(specs):
        raise ValueError(f"partition {partition} has no site: {sites_config} defines {len(specs)} sites "
                         f"({', '.join(s.name for s in specs)}); run at most that many simulated nodes")
    spec = specs[partition]
    site = load_site_stream(Path(streams), spec) if streams else None
    if site is None:
        site = build_site(spec, spatial_dims=spatial_dims, size=(size,) * spatial_dims, dataset=_site_dataset(spec.dataset))
    if not site.samples:
        raise ValueError(f"site {site.name}: its data gives no sample to annotate")
    return site


@functools.lru_cache(maxsize=4)
def _site_dataset(name: str):
    """A dataset read once per process: a worker that runs several sites of one dataset (its
    patients, slice ranges or tiles) reads it once, not once per site."""
    from fedpoint.data import load_dataset

    return load_dataset(name)


# ------------------------------------------------------------------------------ the base
@functools.lru_cache(maxsize=2)
def _load_base(spec: str, mtime: float):
    from fedpoint.shared.model import base_fingerprint, load_base

    net, cfg, _card = load_base(spec)
    return net, cfg, base_fingerprint(net)


def load_site_base(spec: str | Path):
    """(frozen base, model config, fingerprint), cached per process while the file is unchanged."""
    from fedpoint.shared.bases import locate_base

    path = locate_base(spec)
    return _load_base(str(path), path.with_suffix(".safetensors").stat().st_mtime)


# ------------------------------------------------------------------------------ one round
def bank_adapter(bank_arrays: Mapping[str, np.ndarray], instruction: P.RoundInstruction, site: SiteIdentity,
                 fed: SiteRoundConfig, purpose: str, device: str = DEFAULT_DEVICE):
    """(the bank as an adapter on the site's base, the `SiteModelFactory` of that base, bank state);
    a bank made on another base, or with foreign names or shapes, raises AdapterMismatchError
    before anything runs. `device` is resolved (the ClientApp gives the node config's)."""
    from fedpoint.client.site_model import SiteModelFactory
    from fedpoint.shared.adapters import AdapterMismatchError, make_adapter

    base, model_cfg, fingerprint = load_site_base(fed.base)
    if fingerprint != instruction.base_fingerprint:
        raise AdapterMismatchError(f"site {site.site_id} has base {fingerprint}, but bank {instruction.bank} "
                                   f"was made on base {instruction.base_fingerprint}: refusing to {purpose} it")
    adapter = make_adapter(base, instruction.adapter, fingerprint)
    bank_state = from_numpy(bank_arrays)
    adapter.load_state(bank_state)
    return adapter, SiteModelFactory(base, model_cfg, AdaptationConfig(mode="frozen"), device), bank_state


def train_round(bank_arrays: Mapping[str, np.ndarray], instruction: P.RoundInstruction, site: SiteIdentity,
                fed: SiteRoundConfig, device: str = DEFAULT_DEVICE) -> SiteReply:
    """Start from the bank, train on `device` (a resolved torch device: the ClientApp gives the
    node config's), and return the reply (the ClientApp's egress mod checks it). A site of several
    tasks trains the one the instruction names, in that task's store; its reply claims that task."""
    t0 = time.perf_counter()
    site = site.on_task(instruction.task)
    adapter, factory, bank_state = bank_adapter(bank_arrays, instruction, site, fed, "train on", device)
    store = site.task_store
    store.receive_bank(instruction.bank, instruction.bank_version, adapter, {"round": instruction.server_round})

    adaptation = AdaptationConfig(mode=instruction.mode, lr=instruction.lr or None, seed=instruction.seed)
    if site.simulated:
        model = factory.wrap(adapter, adaptation)
        # The site's Adam state continues across rounds, as a local stream's does: the arms then
        # differ in what they are named for (where the weights come from), not in optimizer resets.
        model.load_optimizer_state(store.latest_optimizer_state(adapter.kind))
        weight, metrics = annotate_next(model, store, site, instruction, fed)
        store.save_adapter(adapter, {"source": "federation-round", "round": instruction.server_round},
                           make_current=False, optimizer=model.optimizer.state_dict())
    else:
        episodes = AdaptationConfig(**{**adaptation.model_dump(), "mode": "mid+post+episodes",
                                       "episode_epochs": instruction.local_epochs})
        model = factory.wrap(adapter, episodes)
        weight, metrics = episode_on_cache(model, store)
    metrics = {P.NUM_EXAMPLES: weight, **metrics, "seconds": round(time.perf_counter() - t0, 3),
               "bank-version": instruction.bank_version}
    reply = make_reply(adapter, bank_state, list(bank_arrays), metrics, site, instruction)
    store.log("federation-round", round=instruction.server_round, bank=instruction.bank,
              bank_version=instruction.bank_version, weight=weight)
    return reply


EVAL_MAX_CASES = P.EVAL_MAX_CASES  # at most this many held-out cases (the newest), so a round stays short


def evaluate_bank(bank_arrays: Mapping[str, np.ndarray], instruction: P.RoundInstruction, site: SiteIdentity,
                  fed: SiteRoundConfig, device: str = DEFAULT_DEVICE) -> dict[str, float]:
    """Score a bank version as sent (no training) on the site's held-out cached cases: the mean
    Dice-AUC of the simulated user over `protocol.EVAL_CLICKS` clicks. The held-out cases are the store's
    validation and judgement splits (new cases are assigned first, under the store's lock), so no
    episode has trained on them. Nothing is written but the splits; only the two numbers leave. A site
    of several tasks scores on the cases of the task the instruction names."""
    from fedpoint.client.episodes import load_cases
    from fedpoint.client.guards import simulated_dice_auc

    site = site.on_task(instruction.task)
    adapter, factory, _ = bank_adapter(bank_arrays, instruction, site, fed, "score", device)
    store = site.task_store
    rng = np.random.default_rng(instruction.seed)
    splits = store.assign_new_cases(lambda new: episode_splits.split_rule(new, rng))
    held_out = episode_splits.held_out(splits)[-EVAL_MAX_CASES:]
    if not held_out:
        return {"eval-cases": 0}
    model = factory.wrap(adapter)  # frozen: scored as sent
    score = simulated_dice_auc(model, load_cases(store, held_out), P.EVAL_CLICKS)
    store.log("federation-evaluate", round=instruction.server_round, bank=instruction.bank,
              bank_version=instruction.bank_version, cases=len(held_out), dice_auc=round(score, 4))
    return {"eval-cases": len(held_out), "eval-dice-auc": round(float(score), 6)}


def make_reply(adapter, bank_state, order: list[str], metrics: dict, site: SiteIdentity,
               instruction: P.RoundInstruction) -> SiteReply:
    """The delta against the bank (in the bank's key order) and who answered."""
    delta = to_numpy(adapter.delta(bank_state))
    arrays = {name: delta[name] for name in order}
    config = {P.SITE_ID: site.site_id, P.MODALITY: site.modality, P.BANK: instruction.bank,
              P.BANK_VERSION: instruction.bank_version, P.BASE_FINGERPRINT: adapter.base_fingerprint}
    if site.task:
        config[P.TASK] = site.task
    return SiteReply(arrays, metrics, config)


# ------------------------------------------------------------------------------ simulation
def annotate_next(model, store: SiteStore, site: SiteIdentity, instruction: P.RoundInstruction,
                  fed: SiteRoundConfig) -> tuple[int, dict]:
    """Annotate the next images of the site's stream with the simulated user."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.stream import run_stream

    stream = simulated_site(fed.sites_config, site.partition, instruction.size,
                            fed.sample_dims(model.model_cfg.spatial_dims), fed.site_streams).samples
    start = stream_position(store)
    positions = task_positions(stream, site)  # a site of several tasks: its round's task's part of the stream
    turns = [start + i for i in range(instruction.images)]  # this task's k-th images, wrapping round its part
    samples = [stream[positions[k % len(positions)]] for k in turns]
    engine = SiteEngine(model, SiteStore(site.store), background_episodes=False, task=site.task)
    records = run_stream(engine, samples, instruction.clicks, route=fed.volume_route or None)
    for record, k in zip(records, turns):
        # the sample's place in the site's whole stream (across rounds and tasks): the local arms
        # annotate the same stream, so each image pairs with theirs
        record["index"] = positions[k % len(positions)] + len(stream) * (k // len(positions))
    write_json_atomic(store.root / STREAM_FILE, {"site": site.site_id, "next": start + len(samples)}, indent=2)
    if fed.output_path is not None:
        write_json_atomic(fed.output_path / "records" / site.site_id / f"round-{instruction.server_round:04d}.json",
                          {"site": site.site_id, "modality": site.modality, "round": instruction.server_round,
                           "bank": instruction.bank, "bank_version": instruction.bank_version, "records": records},
                          indent=2)
    return sum(bool(r["accepted"]) for r in records), stream_metrics(records)


def task_positions(samples: list, site: SiteIdentity) -> list[int]:
    """Where in a simulated site's stream its round's task's samples are: the whole stream for a
    site of one task; for a site of several, the samples whose object's structure (`structure_of`)
    is that task, the default task taking those of no declared task. Each task's store keeps its
    own position in its part (`stream_position`)."""
    if len(site.declared) == 1:
        return list(range(len(samples)))
    own = [i for i, s in enumerate(samples) if sample_task(s, site.declared) == site.task]
    if not own:
        raise ValueError(f"site {site.site_id}: no sample of its stream is of task {site.task or DEFAULT_TASK!r}")
    return own


def sample_task(sample, declared: tuple[str | None, ...]) -> str | None:
    """The declared task a sample's object belongs to (None: the default task's)."""
    from fedpoint.shared.tasks import declared_structure

    return _task(declared_structure(getattr(sample, "object_name", ""), declared))


def stream_position(store: SiteStore) -> int:
    path = store.root / STREAM_FILE
    return int(json.loads(path.read_text())["next"]) if path.exists() else 0


def stream_metrics(records: list[dict]) -> dict[str, float]:
    """Round means of the per-image click metrics (never per-image values)."""
    from fedpoint.shared.metrics import CLICK_METRICS, CLICKS, dice_auc

    def mean(key):
        return float(np.mean([r[key] for r in records]))

    out = {k: mean(k) for k in (*CLICK_METRICS, CLICKS)}
    out |= {"predict-ms": mean("predict_ms"), "update-ms": mean("update_ms"), "post-ms": mean("post_ms")}
    out["dice-auc"] = float(np.mean([dice_auc(r["dices"]) for r in records]))
    out["images"] = len(records)
    return out


# ------------------------------------------------------------------------------ deployment
def episode_on_cache(model, store: SiteStore) -> tuple[int, dict]:
    """One CLoPA episode on the annotation cache (regression-guarded); weight = training cases."""
    from fedpoint.client.episodes import EpisodeScheduler

    cases = store.case_ids()
    if len(cases) < episode_splits.MIN_CASES:  # an episode needs a training, a validation and a judgement case
        store.log("federation-skip", reason=f"{len(cases)} accepted case(s); an episode needs {episode_splits.MIN_CASES}")
        return 0, {"images": len(cases), "episodes": 0}
    # The version it writes is not made current: the site service (or whatever next opens the
    # store) decides through its guard; this process only answers the round.
    result = EpisodeScheduler(model, store, background=False, make_current=False).run_episode()
    return result.train_cases, {
        "images": result.train_cases + result.val_cases,
        "episodes": 1,
        "episode-accepted": int(result.accepted),
        "episode-rejected": int(not result.accepted),
        "guard-score": float(max([result.baseline, *result.val_scores])),
    }
