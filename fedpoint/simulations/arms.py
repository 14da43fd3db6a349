"""The arms an experiment compares (eight by default, plus named ablation arms), and how each one runs.

(The experiment TOML's `strategies = [...]`, `--strategies` and the records' "strategy" key
keep the user's word for an arm; in the code, "strategy" is Flower's only.)

Local arms run the site code directly (`SiteEngine` + `run_stream`), one engine and one
site store per site; federated ones run the Flower ServerApp and ClientApp on Flower's simulation
engine (`fedpoint.simulations.flower_sim.run_federation`). All of them annotate the same streams
with the same simulated user, so their per-image records line up by (seed, site, index).
Torch, MONAI and Flower are imported inside the functions that run an arm.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from fedpoint.server.ledger import read_rounds
from fedpoint.shared.metrics import CLICKS, DICE_AUC, DICE_KEYS, NOC_KEYS, NOF, TIMING_KEYS

# Every image record carries these keys (see docs/results-schema.md).
IMAGE_KEYS = ("strategy", "seed", "site", "modality", "shift", "shifted", "late", "join_round", "round", "index",
              "case_id", "object", "task", "dices", *DICE_KEYS, DICE_AUC, *NOC_KEYS, NOF, CLICKS, *TIMING_KEYS, "judge_ms",
              "seconds")
ROUND_KEYS = ("strategy", "seed", "round", "site", "bytes_up", "bytes_down", "images", "seconds")


@dataclass(frozen=True)
class Arm:
    name: str
    kind: Literal["local", "federated"]
    mode: str  # the adaptation mode at every site
    summary: str
    adapter: str | None = None  # None: the experiment's adapter kind
    routing: str | None = None  # federated: "general" (one bank) or "banks" (general + modality banks)
    adaptation: tuple[tuple[str, object], ...] = ()  # AdaptationConfig overrides (ablations; local only)
    ablation: bool = False  # not run unless named (`strategies = [...]` or --strategies)
    accept_truth: bool = False  # the simulated user corrects each mask to the truth before accepting (local only)

    @property
    def federated(self) -> bool:
        return self.kind == "federated"

    def adapter_kind(self, default: str) -> str:
        return self.adapter or default


ARMS: dict[str, Arm] = {s.name: s for s in (
    Arm("frozen", "local", "frozen", "the base model, no adaptation"),
    Arm("local-online", "local", "mid+post", "mid- and post-interaction updates at each site, alone"),
    Arm("local-full", "local", "mid+post", "online updates of every weight at each site, alone (the "
             "fine-tuning baseline)", adapter="full"),
    Arm("local-episodes", "local", "episodes", "training episodes on each site's annotation cache (CLoPA)"),
    Arm("local-online+episodes", "local", "mid+post+episodes", "online updates and episodes, alone"),
    Arm("fed-general", "federated", "mid+post", "online updates, federated into one site-general bank",
             routing="general"),
    Arm("fed-banks", "federated", "mid+post", "online updates, federated into general + modality banks "
             "(fedpoint's default)", routing="banks"),
    Arm("fed-full", "federated", "mid+post", "online updates of every weight, full-model FedAvg into the "
             "same general + modality banks as fed-banks (reference)", adapter="full", routing="banks"),
    # ablations of the seeds' claims, on the same streams (local, so only the named setting differs)
    Arm("local-mid", "local", "mid", "ablation: mid-interaction updates only", ablation=True),
    Arm("local-post", "local", "post", "ablation: post-interaction updates only", ablation=True),
    Arm("local-online-noccg", "local", "mid+post", "ablation: online updates with the click-consistency "
             "guidance off (ccg_beta = 0)", adaptation=(("ccg_beta", 0.0),), ablation=True),
    Arm("local-judged", "local", "mid+post", "online updates kept only while the replay judge finds the site "
             "needs no more clicks on its held-back cases (fedpoint.client.replay_judge)",
             adaptation=(("judge", True),), ablation=True),
    # CLoPA's claims: most of the gain after one episode; episodes as the paper runs them, on true labels
    Arm("local-episodes-1", "local", "episodes", "ablation: one episode per campaign (pseudo-labels)",
             adaptation=(("episode_max", 1),), ablation=True),
    Arm("local-episodes-3", "local", "episodes", "ablation: up to three episodes per campaign (pseudo-labels)",
             adaptation=(("episode_max", 3),), ablation=True),
    Arm("local-episodes-true", "local", "episodes", "ablation: episodes on true labels (the user corrects "
             "each mask before accepting, as in CLoPA)", ablation=True, accept_truth=True),
    Arm("local-episodes-1-true", "local", "episodes", "ablation: one episode per campaign, on true labels",
             adaptation=(("episode_max", 1),), ablation=True, accept_truth=True),
)}
ARM_NAMES: tuple[str, ...] = tuple(ARMS)  # every known arm, in canonical order
DEFAULT_ARMS: tuple[str, ...] = tuple(n for n, s in ARMS.items() if not s.ablation)
ABLATIONS: tuple[str, ...] = tuple(n for n, s in ARMS.items() if s.ablation)
DEFAULT_ARM = "fed-banks"  # fedpoint's default: the one the headline targets are about


def image_record(raw: dict, *, arm: str, seed: int, site, round_: int) -> dict:
    """One annotated image in the results' flat form (a `run_stream`/ClientApp record plus where it ran).
    `site` is a `fedpoint.data.Site`."""
    record = {
        "strategy": arm,  # the record's key keeps the experiment TOML's word
        "seed": seed,
        "site": site.name,
        "modality": site.modality,
        "shift": site.shift,
        "shifted": site.shift != "none",
        "late": site.spec.join_round > 0,
        "join_round": site.spec.join_round,
        "round": int(round_),
        "index": int(raw["index"]),
        "case_id": raw.get("case_id", ""),
        "object": raw.get("object", ""),
        "task": _record_task(raw, site),
        "dices": [float(d) for d in raw["dices"]],
    }
    for key in (*DICE_KEYS, NOF, *TIMING_KEYS, "judge_ms", "seconds"):
        record[key] = float(raw.get(key, 0.0))
    record[DICE_AUC] = dice_auc(record["dices"])
    for key in (*NOC_KEYS, CLICKS):
        record[key] = int(raw[key])
    return record


def _record_task(raw: dict, site) -> str:
    """The task the image adapted (a site of several tasks: its structure's), else the site's."""
    from fedpoint.shared.tasks import normalise_task

    return normalise_task(raw["task"]) if raw.get("task") else site_task(site)


def site_task(site) -> str:
    """The task (structure) a site's images adapt, normalised; "default" when it declares none."""
    from fedpoint.shared.tasks import normalise_task

    return normalise_task(site.spec.task)


def dice_auc(dices: list[float]) -> float:
    """Area under the Dice-vs-clicks curve, normalised to [0, 1]: the mean Dice over clicks 1..n
    (each click's Dice held until the next), so it rewards reaching a good mask early."""
    return float(sum(dices) / len(dices)) if dices else 0.0


def run_local(arm: Arm, experiment, seed: int, sites: list, work, on_image: Callable[[dict], None] | None = None) -> dict:
    """Annotate every site's stream with its own engine and store; no bytes leave a site.
    Returns {"images": [...], "rounds": [...], "episodes": [...]}."""
    images, rounds, episodes = [], [], []
    for site in sites:
        records, engine = annotate_site(arm, experiment, seed, site, Path(work) / site.name, on_image)
        if engine.scheduler is not None:
            episodes += [{"strategy": arm.name, "seed": seed, "site": site.name, **r.as_dict()}
                         for r in engine.scheduler.results]
        images += records
        rounds += local_rounds(arm.name, seed, site.name, records)
    return {"images": images, "rounds": rounds, "episodes": episodes}


def annotate_site(arm: Arm, experiment, seed: int, site, store_dir, on_image=None):
    """One site's whole stream through its own `SiteEngine`; returns (image records, engine)."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_round import declared_tasks
    from fedpoint.client.stream import run_stream

    kind = arm.adapter_kind(experiment.adapter)
    adaptation = experiment.adaptation_config(arm.mode, seed, kind)
    if arm.adaptation:
        adaptation = adaptation.model_copy(update=dict(arm.adaptation))
    declared = declared_tasks(site.spec.task, site.spec.tasks)  # as the site's ClientApp reads them
    engine = SiteEngine.create(
        experiment.base, kind, adaptation,
        store=store_dir, campaign_size=len(site.samples), background_episodes=False, task=declared["task"])
    records: list[dict] = []

    def tick(i: int, raw: dict) -> None:
        rec = image_record(raw, arm=arm.name, seed=seed, site=site,
                           round_=local_round(site, i, experiment.images_per_round))
        records.append(rec)
        if on_image is not None:
            on_image(rec)

    # a site of several tasks: each image adapts its structure's adapter, as in its federated rounds
    run_stream(engine, site.samples, experiment.clicks, on_image=tick, accept_truth=arm.accept_truth,
               route=experiment.route, tasks=declared.get("tasks") or None)
    return records, engine


def local_round(site, index: int, images_per_round: int) -> int:
    """The round (counted from 1, as Flower does) in which a site annotates its `index`-th image:
    a site with `join_round = j` misses the first j rounds."""
    return site.spec.join_round + index // images_per_round + 1


def local_rounds(arm: str, seed: int, site: str, records: list[dict]) -> list[dict]:
    """Round rows of a local arm: the images of each round, nothing sent or received."""
    by_round: dict[int, list[dict]] = {}
    for rec in records:
        by_round.setdefault(rec["round"], []).append(rec)
    return [{"strategy": arm, "seed": seed, "round": r, "site": site, "bytes_up": 0, "bytes_down": 0,
             "images": len(recs), "seconds": round(sum(x["seconds"] for x in recs), 3)}
            for r, recs in sorted(by_round.items())]


# ------------------------------------------------------------------------------------ federated
def run_federated(arm: Arm, experiment, seed: int, sites: list, work,
                  on_image: Callable[[dict], None] | None = None) -> dict:
    """Run the Flower ServerApp and ClientApp on Flower's simulation engine, one virtual node per
    site, and read back what the sites annotated. Late joiners are nodes from the start, but the
    coordinator samples a site with `join_round = j` only from round j + 1 (its sites-config entry
    tells the strategy), so it receives the bank current at that round and contributes its deltas
    from then on. Returns {"images", "rounds", "federation"}."""
    from fedpoint.data import save_site_stream
    from fedpoint.simulations.flower_sim import run_federation

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    starting = [s for s in sites if s.spec.join_round == 0]
    sites_toml = write_sites_toml([s.spec for s in sites], work / "sites.toml")  # partition i = sites[i]
    run_config = federation_run_config(arm, experiment, seed, sites_toml, work) | {"min-train-nodes": len(starting)}
    if experiment.spatial_dims == 2:  # the workers load these streams instead of reading the datasets again
        for site in sites:
            save_site_stream(site, work / "streams")
        run_config["site-streams"] = str(work / "streams")
    by_name = {s.name: s for s in sites}

    def progress(raw: dict, site_name: str, round_: int) -> None:
        if on_image is not None:
            on_image(image_record(raw, arm=arm.name, seed=seed, site=by_name[site_name], round_=round_))

    with RecordWatcher(work / "records", progress):
        outcome = run_federation(run_config, num_sites=len(sites), log_path=work / "flower.log")
    images = read_records(work / "records", arm.name, seed, by_name)
    rounds = federation_rounds(work, arm.name, seed, images)
    late = joined_banks(work, [s.name for s in sites if s.spec.join_round > 0])
    return {"images": images, "rounds": rounds, "federation": {"outcome": _plain(outcome), "late": late}}


def joined_banks(work, late_sites: list[str]) -> list[dict]:
    """What each late joiner received in its first round: {site, round, bank, version}, from the
    coordinator's round summary."""
    history = read_rounds(work)
    out = []
    for name in late_sites:
        first = next((h for h in sorted(history, key=lambda h: h["round"]) if name in h["sites"]), None)
        if first is not None:
            info = first["sites"][name]
            out.append({"site": name, "round": int(first["round"]), "bank": info.get("bank", ""),
                        "version": info.get("bank_version")})
    return out


def federation_run_config(arm: Arm, experiment, seed: int, sites_toml, work) -> dict:
    """The Flower run config (kebab-case keys) of one federated arm and seed."""
    return {
        "num-server-rounds": experiment.rounds,
        "adapter-kind": arm.adapter_kind(experiment.adapter),
        "images-per-round": experiment.images_per_round,
        "clicks": experiment.clicks,
        "mode": arm.mode,
        "lr": experiment.lr_for(arm.adapter_kind(experiment.adapter)),
        "sites-config": str(sites_toml),
        "size": experiment.size,
        "base": experiment.base or "",
        "volume-route": experiment.route or "",
        "bank-store": str(work / "banks"),
        "bank-routing": arm.routing,
        "output-dir": str(work),
        "seed": seed,
    }


def write_sites_toml(specs: list, path) -> Path:
    """The `[[sites]]` of one seed, exactly as built here: which partition is which site for the
    simulated ClientApps, and all they need to rebuild a site without its built stream."""
    import tomli_w

    tables = [s.model_dump(mode="json", exclude_none=True) for s in specs]
    path = Path(path)
    path.write_text(tomli_w.dumps({"sites": tables}))
    return path


def read_records(records_dir, arm: str, seed: int, sites: dict) -> list[dict]:
    """The per-image records the ClientApps wrote: `<records>/<site>/round-<r>.json`."""
    images = []
    for path in sorted(Path(records_dir).glob("*/round-*.json")):
        payload = json.loads(path.read_text())
        site = sites[payload["site"]]
        images += [image_record(raw, arm=arm, seed=seed, site=site, round_=payload["round"])
                   for raw in payload["records"]]
    return sorted(images, key=lambda r: (r["site"], r["index"]))


def federation_rounds(work, arm: str, seed: int, images: list[dict]) -> list[dict]:
    """Round rows from the coordinator's round summary (`<output-dir>/federation.json`: bytes sent
    to and received from each site), with each site's annotation seconds of that round."""
    seconds: dict[tuple, float] = {}
    counts: dict[tuple, int] = {}
    for rec in images:
        key = (rec["round"], rec["site"])
        seconds[key] = seconds.get(key, 0.0) + rec["seconds"]
        counts[key] = counts.get(key, 0) + 1
    history = read_rounds(work)
    rows = []
    for entry in history:
        for site, info in sorted(entry["sites"].items()):
            key = (int(entry["round"]), site)
            rows.append({"strategy": arm, "seed": seed, "round": key[0], "site": site,
                         "bytes_up": int(info["bytes_up"]), "bytes_down": int(info["bytes_down"]),
                         "images": counts.get(key, 0), "seconds": round(seconds.get(key, 0.0), 3),
                         "status": info.get("status", ""), "bank": info.get("bank", "")})
    return rows


class RecordWatcher:
    """While a federation runs in other processes, report each new record file's images."""

    def __init__(self, folder, on_record: Callable[[dict, str, int], None], every: float = 1.0):
        self.folder, self.on_record, self.every = folder, on_record, every
        self.seen: set = set()

    def _scan(self) -> None:
        for path in sorted(Path(self.folder).glob("*/round-*.json")):
            if path in self.seen:
                continue
            try:
                payload = json.loads(path.read_text())
            except (OSError, ValueError):  # written atomically, but be lenient about a race
                continue
            self.seen.add(path)
            for raw in payload["records"]:
                self.on_record(raw, payload["site"], int(payload["round"]))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._scan()

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fedpoint-records", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()


def _plain(value):
    """What run_federation returned, reduced to JSON-able values (for the results' `federation`)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
