"""Run an experiment: every arm, every seed, the same streams; then results.json, plots, report.md.

Output folder:
    results.json        everything measured (docs/results-schema.md)
    report.md           headline table, targets, plots, per-site tables, data, timings
    *.png               the plots
    work/seed-<s>/<arm>/...   site stores, bank stores and Flower records of each run
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from fedpoint.simulations.experiment import ExperimentConfig, ExperimentError
from fedpoint.simulations.plots import write_plots
from fedpoint.simulations.report import compute_headline, evaluate_targets, write_report
from fedpoint.simulations.arms import ARMS, run_federated, run_local

SCHEMA = "fedpoint.results/2"  # /2: learning curves (`curves`), image `task`


def run_experiment(config: ExperimentConfig, out_dir: str | Path, progress: bool = True,
                   data_dir: str | Path | None = None, full: bool = False) -> dict:
    """Run all arms of `config` on all seeds; write results.json, the plots and report.md into
    `out_dir` and return the results dict. The records are in (seed, arm) order whatever the
    lanes (`config.lanes`) ran at once. Then each companion scenario (`config.companions`, loaded
    with the same `full`) runs into `out_dir/<its name>/`, and the main report shows its curves."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    if config.source_base is not None:  # change of modality: the base trained on one family only
        from fedpoint.simulations.source_base import ensure_source_base

        base = ensure_source_base(config.source_base, Path(data_dir) if data_dir else None, progress)
        config = config.model_copy(update={"base": str(base)})
    datasets: dict = {}  # each dataset read once for every seed
    first, data = build_experiment_sites(config, config.seeds[0], data_dir, datasets)  # bad sites fail here, first
    built, building = {config.seeds[0]: first}, threading.Lock()

    def sites_of(seed: int) -> list:  # later seeds are built by the lane that first needs them
        with building:
            if seed not in built:
                built[seed] = build_experiment_sites(config, seed, data_dir, datasets)[0]
            return built[seed]

    jobs = [(seed, name) for seed in config.seeds for name in config.strategies]
    with _progress(progress, config) as (on_image, timing):
        def run_job(job: tuple[int, str]) -> tuple[dict, float]:
            seed, name = job
            arm = ARMS[name]
            work = fresh_folder(out_dir / "work" / f"seed-{seed}" / name)
            run = run_federated if arm.federated else run_local
            t0 = time.perf_counter()
            with timing(name, seed):
                part = run(arm, config, seed, sites_of(seed), work, on_image=on_image)
            return part, time.perf_counter() - t0

        from fedpoint.simulations.flower_sim import stop_simulations

        done = run_in_lanes(jobs, run_job, lane_of=lambda job: int(ARMS[job[1]].federated) if config.lanes > 1 else 0,
                            on_interrupt=stop_simulations)
    images: list[dict] = []
    rounds: list[dict] = []
    episodes: list[dict] = []
    federation: list[dict] = []
    strategy_seconds: dict[str, float] = defaultdict(float)
    for (seed, name), (part, seconds) in zip(jobs, done):
        strategy_seconds[name] += seconds
        images += part["images"]
        rounds += part["rounds"]
        episodes += part.get("episodes", [])
        if "federation" in part:
            federation.append({"strategy": name, "seed": seed, **part["federation"]})
    results = assemble(config, images, rounds, episodes, federation, data, dict(strategy_seconds),
                       time.perf_counter() - started)
    write_outputs(results, out_dir)
    if config.companions:
        results["companions"] = [run_companion(name, out_dir, progress, data_dir, full) for name in config.companions]
        results["seconds"] = round(time.perf_counter() - started, 1)
        write_outputs(results, out_dir)
    return results


def run_companion(name: str, out_dir: Path, progress: bool, data_dir, full: bool) -> dict:
    """One companion scenario into `out_dir/<name>/`; what the main results keep of it."""
    from fedpoint.simulations.experiment import load_experiment

    companion = load_experiment(name, full=full)
    if companion.companions:
        raise ExperimentError(f"{name}: a companion scenario has no companions of its own")
    results = run_experiment(companion, out_dir / companion.name, progress, data_dir)
    return {"name": companion.name, "description": companion.description, "folder": companion.name,
            "seconds": results["seconds"], "second_half": results["curves"]["second_half"],
            "headline": results["headline"]}


def run_in_lanes(jobs: list, run: Callable, lane_of: Callable[[object], int],
                 on_interrupt: Callable[[], None] | None = None) -> list:
    """`run(job)` for every job, in lanes that run side by side (a thread each; the jobs of one lane
    one after another, in order); the results in the order of `jobs`. The experiment puts the
    federated arms in one lane and the local arms in another: a federation runs in processes of its
    own, while a local arm computes here on one torch thread, on the core Ray leaves idle between
    its sites' rounds. After a failure no lane starts another job, and the first error is raised.
    On Ctrl-C, `on_interrupt()` runs and the interrupt is raised at once (the lanes are daemon
    threads: a job still running ends with the process)."""
    lanes: dict[int, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        lanes[lane_of(job)].append(i)
    results: dict[int, object] = {}
    failed: list[BaseException] = []

    def drive(indices: list[int]) -> None:
        for i in indices:
            if failed:
                return
            try:
                results[i] = run(jobs[i])
            except BaseException as err:  # noqa: BLE001 - the other lane stops; re-raised below
                failed.append(err)
                return

    if len(lanes) == 1:
        drive(next(iter(lanes.values())))
    else:
        threads = [threading.Thread(target=drive, args=(indices,), name=f"fedpoint-lane-{lane}", daemon=True)
                   for lane, indices in lanes.items()]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # a bounded wait, so Ctrl-C reaches this thread
        except BaseException as err:
            failed.append(err)
            if on_interrupt is not None:
                on_interrupt()
            raise
    if failed:
        raise failed[0]
    return [results[i] for i in range(len(jobs))]


def fresh_folder(path: Path) -> Path:
    """An empty work folder: a rerun must not resume a previous run's site stores or bank store."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def assemble(config: ExperimentConfig, images, rounds, episodes, federation, data, strategy_seconds, seconds) -> dict:
    from fedpoint.simulations.curves import learning_curves
    from fedpoint.simulations.statistics import comparisons

    headline = compute_headline(images, rounds, config.images_per_round)
    comps = comparisons(images)
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        "experiment": config.model_dump(mode="json"),
        "environment": environment(config),
        "data": data,
        "headline": headline,
        "curves": learning_curves(images),
        "targets": evaluate_targets(headline, comps),
        "comparisons": comps,
        "images": images,
        "rounds": rounds,
        "episodes": episodes,
        "federation": federation,
        "strategy_seconds": {k: round(v, 1) for k, v in strategy_seconds.items()},
    }


def write_outputs(results: dict, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    plots = write_plots(results, out_dir)
    write_report(results, out_dir / "report.md", plots)


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ------------------------------------------------------------------------------------ sites
def build_experiment_sites(config: ExperimentConfig, seed: int, data_dir=None,
                           datasets: dict | None = None) -> tuple[list, dict]:
    """The sites of one seed (each dataset loaded once, into `datasets` when given, so later seeds
    reuse it) and the data section of the results."""
    from fedpoint.data import build_site, load_dataset
    from fedpoint.simulations.experiment import check_sites_disjoint

    specs = config.sites_for_seed(seed)
    try:
        check_sites_disjoint(specs)  # the loader checked too; a config built in code must pass as well
    except ValueError as err:
        raise ExperimentError(f"{config.name}: {err}") from None
    datasets = {} if datasets is None else datasets
    for spec in specs:
        if spec.dataset not in datasets:
            datasets[spec.dataset] = load_dataset(spec.dataset, data_dir=data_dir)
    dims = config.spatial_dims
    _check_base_dims(config)
    sites = [build_site(spec, spatial_dims=dims, size=(config.size,) * dims, dataset=datasets[spec.dataset]) for spec in specs]
    for site, spec in zip(sites, specs):
        if len(site.samples) < spec.stream_length:
            raise ExperimentError(
                f"sites.{site.name}: only {len(site.samples)} images, but {config.site_rounds(spec)} rounds of "
                f"{config.images_per_round} need {spec.stream_length}; lower images_per_round or rounds, or widen "
                f"the site's objects/cases")
    return sites, describe_data(sites, datasets, data_dir)


def _check_base_dims(config: ExperimentConfig) -> None:
    """The base must annotate what the sites hold: a 2D base images, slices and (by propagation)
    volumes, a 3D base whole volumes."""
    from fedpoint.shared.bases import base_config

    try:
        dims = base_config(config.base).spatial_dims
    except FileNotFoundError as err:
        raise ExperimentError(f"{config.name}: {err}") from None
    if dims != config.base_dims:
        what = "route = 'propagate'" if config.route == "propagate" else f"spatial_dims = {config.spatial_dims}"
        raise ExperimentError(f"{config.name}: {what} but base {config.base or 'base2d'!r} "
                              f"is {dims}D; use a {config.base_dims}D base (base{config.base_dims}d)")


def describe_data(sites: list, datasets: dict, data_dir=None) -> dict:
    from fedpoint.data import list_datasets

    infos = {i.name: i for i in list_datasets(data_dir)}
    described = []
    for name, dataset in datasets.items():
        info = infos.get(name)
        used = {x.object_name.split("#")[0] for site in sites if site.spec.dataset == name for x in site.samples}
        objects = [o for c in dataset.cases for o in c.objects if o.name in used]
        described.append({
            "name": name,
            "modality": dataset.modality,
            "subjects": info.subjects if info else len(dataset.cases),
            "cases": len(dataset.cases),
            "labels": dataset.labels,
            "derived_objects": collapse_names(o.name for o in objects if o.derived),  # of the objects the sites use
            "source": info.source if info else dataset.source,
            "licence": info.licence if info else dataset.licence,
            "notes": info.notes if info else "",
        })
    return {
        "datasets": described,
        "modalities": sorted({s.modality for s in sites}),
        "sites": [{"name": s.name, "dataset": s.spec.dataset, "modality": s.modality, "shift": s.shift,
                   "join_round": s.spec.join_round, "images": len(s.samples),
                   "cases": s.case_ids, "objects": collapse_names(x.object_name for x in s.samples),
                   "image_shapes": sorted({tuple(x.mask.shape) for x in s.samples})} for s in sites],
    }


def collapse_names(names) -> list[str]:
    """Distinct object names, numbered families folded: nucleus-3, nucleus-17 -> "nucleus-* (2)"."""
    distinct = sorted({n.split("#")[0] for n in names})
    families: dict[str, list[str]] = defaultdict(list)
    for n in distinct:
        families[re.sub(r"-\d+$", "-*", n)].append(n)
    return [f"{k} ({len(v)})" if k.endswith("*") else k for k, v in families.items()]


def environment(config: ExperimentConfig) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available()}
    try:
        from importlib.metadata import version

        env["flwr"] = version("flwr")
        env["fedpoint"] = version("fedpoint")
    except Exception:  # not installed as a distribution: leave the versions out
        pass
    env["machine"] = f"{env['cpus']} CPU cores" + (", a GPU" if env["gpu"] else ", no GPU")
    try:
        from fedpoint.shared.bases import resolve_base

        card = json.loads(resolve_base(config.base).with_suffix(".json").read_text())
        env["base"] = {"spec": config.base or "base2d", "fingerprint": card.get("fingerprint"),
                       "provenance": card.get("provenance", {}), "validation": card.get("validation", {})}
    except (FileNotFoundError, json.JSONDecodeError) as err:
        env["base"] = {"spec": config.base, "error": str(err)}
    return env


# ------------------------------------------------------------------------------------ progress
@contextmanager
def _progress(enabled: bool, config: ExperimentConfig) -> Iterator[tuple[Callable[[dict], None], Callable]]:
    """Yields (on_image, timing): one bar per arm with its running Dice@3 and the time spent
    in it; `with timing(name, seed):` around each run of an arm (runs of different arms
    may overlap: the lanes)."""
    if not enabled:
        yield (lambda rec: None), (lambda name, seed: nullcontext())
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    per_seed = sum(config.stream_length(s) for s in config.sites)
    columns = (TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("Dice@3 {task.fields[d3]}"), TextColumn("{task.fields[spent]:>5.0f} s"))
    with Progress(*columns, console=Console()) as bar:
        tasks = {n: bar.add_task(n, total=per_seed * len(config.seeds), d3="  –  ", spent=0.0)
                 for n in config.strategies}
        dice3: dict[str, list[float]] = defaultdict(list)
        spent: dict[str, float] = defaultdict(float)
        running: dict[str, float] = {}  # arm -> when its current run started

        def show_time(name: str) -> None:
            since = running.get(name)
            bar.update(tasks[name], spent=spent[name] + (time.perf_counter() - since if since else 0.0))

        def on_image(rec: dict) -> None:
            name = rec["strategy"]
            dice3[name].append(rec["dice3"])
            values = dice3[name]
            bar.update(tasks[name], advance=1, d3=f"{sum(values) / len(values):.3f}")
            show_time(name)

        @contextmanager
        def timing(name: str, seed: int):
            running[name] = time.perf_counter()
            bar.update(tasks[name], description=f"{name} (seed {seed})")
            try:
                yield
            finally:
                spent[name] += time.perf_counter() - running.pop(name)
                show_time(name)

        yield on_image, timing
