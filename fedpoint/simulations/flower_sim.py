"""Simulated federations from Python: the same ServerApp and ClientApp as `flwr run . local`, on
Flower's simulation engine (`flwr.simulation.run_simulation`, Ray backend, one CPU per virtual
site).

`run_simulation` hands the apps an empty run config, so the apps are built with the federation's
config as their defaults. The simulation runs in a child process of its own process group, so a
timeout can stop it together with its Ray workers, and two simulations never share a Ray runtime.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from fedpoint.server.ledger import last_round, read_rounds
from fedpoint.shared.run_config import SimulationConfig, parse_run_config


def run_federation(config: Mapping, num_sites: int, *, timeout: float = 1800.0, verbose: bool = False,
                   log_path: Path | None = None) -> dict:
    """Run a simulated federation and return its summary (rounds, per-round bytes up/down per site,
    per-round metrics, bank versions written). `config` holds run-config keys (kebab-case). With
    `log_path`, Flower's and Ray's output goes to that file (the simulation's process writes it, so
    the caller's own output stays where it was); a failure's error ends with the file's last lines."""
    fed = parse_run_config(config, reader=SimulationConfig)
    if fed.output_path is None:
        raise ValueError("run_federation reads its results from output-dir: set output-dir")
    after = resume_point(fed)  # the rounds this run reports are those after it, whatever the files held
    t0 = time.perf_counter()
    _run_isolated(parse_run_config(config).to_run_config(), num_sites, timeout, verbose, log_path)  # the whole config, for both apps
    seconds = time.perf_counter() - t0
    return summarize_federation(fed, [r for r in _rounds(fed.output_path) if r["round"] > after], seconds)


def resume_point(fed: SimulationConfig) -> int:
    """The round the coordinator will resume after, from the bank store's journal and
    federation.json, as the ServerApp computes it (`fedpoint.server.ledger.last_round`)."""
    from fedpoint.server.banks import BankStore

    try:
        journal = BankStore(fed.bank_store_path, create=False).journal()
    except FileNotFoundError:  # no store yet: a new federation
        journal = []
    return last_round(journal, _rounds(fed.output_path))


def simulate(run_config: dict, num_sites: int, verbose: bool = False) -> None:
    """Run the simulation in this process (what the child process does)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    from fedpoint.client.client_app import build_client_app
    from fedpoint.server.server_app import build_server_app

    run_simulation(
        server_app=build_server_app(run_config),
        client_app=build_client_app(run_config),
        num_supernodes=num_sites,
        backend_name="ray",
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        verbose_logging=verbose,
    )


def _child(run_config: dict, num_sites: int, verbose: bool, log_path: str | None) -> None:
    os.setpgrp()  # Ray's processes join this group, so a timeout can stop them all
    if log_path is not None:  # this process's descriptors: Ray's workers and log monitor inherit them
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    simulate(run_config, num_sites, verbose)


def _run_isolated(run_config: dict, num_sites: int, timeout: float, verbose: bool, log_path: Path | None = None) -> None:
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    args = (run_config, num_sites, verbose, None if log_path is None else str(log_path))
    process = multiprocessing.get_context("spawn").Process(target=_child, args=args, name="fedpoint-simulation")
    process.start()
    _RUNNING.add(process)
    try:
        process.join(timeout)
    except BaseException:  # Ctrl-C or a failing caller: the simulation and its Ray processes go too
        _stop_group(process)
        raise
    finally:
        _RUNNING.discard(process)
    if process.is_alive():
        _stop_group(process)
        raise TimeoutError(f"the simulated federation did not finish within {timeout:g} s; {_where(log_path)}")
    if process.exitcode != 0:
        _stop_group(process)  # what the simulation left behind (Ray's processes), when it died hard
        raise RuntimeError(f"the simulated federation failed (exit code {process.exitcode}); {_where(log_path)}")


def _where(log_path: Path | None, lines: int = 25) -> str:
    """Where to read why: the terminal, or the log's last lines."""
    if log_path is None:
        return "see the log above"
    try:
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        tail = "(no log written)"
    return f"last lines of {log_path}:\n{tail}"


_RUNNING: set = set()  # the simulation processes started here and not yet ended


def stop_simulations() -> None:
    """Kill every simulation this process started, with its Ray processes (their process group):
    for an interrupt that arrives in another thread than the one waiting on the simulation."""
    for process in list(_RUNNING):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_group(process) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.join(wait)
        if not process.is_alive():
            return


# ------------------------------------------------------------------------------ results
def _rounds(output: Path) -> list[dict]:
    return read_rounds(output)  # federation.json, written by the ServerApp's strategy into output-dir


def summarize_federation(fed: SimulationConfig, rounds: list[dict], seconds: float) -> dict:
    from fedpoint.server.banks import BankStore

    store = BankStore(fed.bank_store_path)
    return {
        "rounds": len(rounds),
        "seconds": round(seconds, 1),
        "round_numbers": [r["round"] for r in rounds],
        "bytes": [{site: {"up": s["bytes_up"], "down": s["bytes_down"]} for site, s in r["sites"].items()} for r in rounds],
        "metrics": [round_means(r) for r in rounds],
        "status": [{site: s["status"] for site, s in r["sites"].items()} for r in rounds],
        "versions_written": [r["versions"] for r in rounds],
        # central DP: epsilon after each round at the configured delta (None without the accountant)
        "epsilon": [(r.get("dp") or {}).get("epsilon") for r in rounds],
        # the federated evaluation round: each new bank version as the sites scored it (held-out cases)
        "evaluation": [(r.get("evaluation") or {}).get("banks", {}) for r in rounds],
        "banks": {bank: store.versions(bank) for bank in store.banks()},
        "bank_store": str(store.root),
        "output_dir": str(fed.output_path),
    }


def round_means(entry: dict) -> dict[str, float]:
    """Weighted (by accepted cases) means of the accepted sites' metrics in one round."""
    sums: dict[str, float] = {}
    total = 0.0
    for site in entry["sites"].values():
        if site["status"] != "accepted":
            continue
        total += site["weight"]
        for key, value in site["metrics"].items():
            sums[key] = sums.get(key, 0.0) + site["weight"] * float(value)
    return {k: round(v / total, 4) for k, v in sorted(sums.items())} if total else {}
