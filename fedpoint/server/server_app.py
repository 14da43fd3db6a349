"""The coordinator's Flower ServerApp: `app` for `flwr run`, `build_server_app` for in-process
simulations (whose run config is empty, so the defaults are given here).

It loads the frozen base (only to pin its fingerprint and build the starting adapter), opens the
bank store (creating the general bank from the base adapter when the store is empty, resuming
from the latest versions otherwise), and runs the bank strategy for `num-server-rounds` rounds,
wrapped in Flower's client-side fixed-clipping DP when `dp-noise-multiplier` > 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedpoint.server.banks import BankStore
from fedpoint.server.ledger import SUMMARY_FILE, last_round, read_rounds
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.privacy_accountant import BudgetExceeded, PrivacyAccountant
from fedpoint.server.registry import SiteRegistry
from fedpoint.server.routing import GENERAL
from fedpoint.server.strategy import bank_strategy_of, build_strategy
from fedpoint.shared.payload import encode_arrays
from fedpoint.shared.run_config import CoordinatorConfig, parse_run_config


def build_server_app(defaults: Mapping | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_coordinator(grid, parse_run_config(context.run_config, defaults, CoordinatorConfig))

    return app


def run_coordinator(grid: Grid, fed: CoordinatorConfig) -> list[dict]:
    """Run the federation's rounds; returns the per-round summary (also in output-dir)."""
    adapter = base_adapter(fed)
    store = BankStore(fed.bank_store_path).require_key().lock()  # unsigned: refused; a second coordinator: refused
    try:
        return _run(grid, fed, adapter, store)
    finally:
        store.unlock()


def site_registry(fed: CoordinatorConfig) -> SiteRegistry:
    """Deployment: the registry file `site-registry` (written by deploy/register-sites.sh).
    Simulation (no file): the sites config's names, each bound to the first node that names it."""
    if fed.site_registry:
        return SiteRegistry.load(fed.site_registry)
    from fedpoint.configs import resolve_config
    from fedpoint.data import load_site_specs

    try:
        names = [spec.name for spec in load_site_specs(resolve_config(fed.sites_config))]
    except (OSError, ValueError) as err:  # DataError is a ValueError
        raise ValueError(f"no site registry: set site-registry (deployment; deploy/register-sites.sh writes it) or a "
                         f"readable sites-config (simulation): {err}") from None
    return SiteRegistry.from_site_names(names)


def site_join_rounds(fed: CoordinatorConfig) -> dict[str, int]:
    """Simulation (no registry file): the sites config's late joiners, site -> `join_round`, so the
    strategy samples them only from round join_round + 1. A deployed site joins by starting its
    SuperNode: empty there."""
    if fed.site_registry:
        return {}
    from fedpoint.configs import resolve_config
    from fedpoint.data import load_site_specs

    try:
        return {s.name: s.join_round for s in load_site_specs(resolve_config(fed.sites_config)) if s.join_round}
    except (OSError, ValueError):  # site_registry() reports an unreadable sites config
        return {}


def _run(grid: Grid, fed: CoordinatorConfig, adapter, store: BankStore) -> list[dict]:
    for line in store.recover():
        log(WARNING, "bank store: %s", line)
    resume_after = resume_point(store, fed, open_banks(store, adapter))
    log(INFO, "bank store %s: banks %s, resuming after round %d", store.root, ", ".join(store.banks()), resume_after)
    runner = build_strategy(
        fed.privacy, store, CoordinatorPolicy.from_config(fed), noise_multiplier=fed.dp_noise_multiplier,
        clipping_norm=fed.dp_clipping_norm, accountant=privacy_accountant(store, fed),
        fingerprint=adapter.base_fingerprint, schema=adapter.schema(), registry=site_registry(fed),
        summary_path=fed.output_path / SUMMARY_FILE if fed.output_path else None, round_offset=resume_after,
        join_rounds=site_join_rounds(fed),
    )
    if fed.dp:
        log(INFO, "central DP on: noise multiplier %g, client-side clipping norm %g, delta %g, epsilon budget %s",
            fed.dp_noise_multiplier, fed.dp_clipping_norm, fed.dp_delta, fed.dp_epsilon_budget or "none")
    general = store.latest(GENERAL).state
    initial = encode_arrays({k: general[k] for k in adapter.schema()})
    try:
        runner.start(grid, initial, num_rounds=fed.num_server_rounds, timeout=fed.round_timeout, train_config=ConfigRecord())
    except BudgetExceeded as stop:  # a planned end: the rounds before it are all written
        log(WARNING, "privacy budget: %s", stop)
    return bank_strategy_of(runner).ledger.as_json()


def privacy_accountant(store: BankStore, fed: CoordinatorConfig) -> PrivacyAccountant | None:
    """Under central DP: the accountant, resumed from the rounds in the store's journal."""
    if not fed.dp:
        return None
    rounds = [(j.get("summary") or {}).get("entry") or {} for j in store.journal()]
    return PrivacyAccountant.from_rounds(fed.dp_delta, fed.dp_epsilon_budget, rounds)


def resume_point(store: BankStore, fed: CoordinatorConfig, banks_round: int = 0) -> int:
    """The round this coordinator resumes after: the last round of the store's journal or of
    federation.json (`ledger.last_round`), whichever is later, so a round that was committed, or
    recorded without new versions, is never run or reported twice. `banks_round` (the newest
    version's round) only matters for a store written before rounds were journaled."""
    summary = fed.output_path / SUMMARY_FILE if fed.output_path else None
    journaled = last_round(store.journal(), read_rounds(summary))
    if banks_round > journaled:
        log(WARNING, "bank store %s: versions of round %d but no journal entry for it (an older store); resuming "
            "after round %d", store.root, banks_round, banks_round)
    return max(journaled, banks_round)


def base_adapter(fed: CoordinatorConfig):
    """The run's adapter kind opened on the frozen base: its fingerprint, schema and start state."""
    from fedpoint.shared.adapters import make_adapter
    from fedpoint.shared.bases import locate_base
    from fedpoint.shared.model import load_base

    net, _cfg, _card = load_base(locate_base(fed.base))
    return make_adapter(net, fed.adapter_config())


def open_banks(store: BankStore, adapter) -> int:
    """Create the general bank from the base adapter in an empty store; otherwise check that the
    store was made for this base and adapter config. Returns the last aggregated round."""
    if not store.banks() and store.verify():
        problem = next((r["problem"] for r in store.verify() if not r["healthy"]), "none verifies")
        raise ValueError(f"bank store {store.root} holds bank versions but none verifies ({problem}); it is not "
                         "re-created over them: inspect it with `fedpoint bank verify`, restore the files, or use another bank-store")
    if not store.banks():
        store.init_bank(GENERAL, adapter.state(), adapter.base_fingerprint, adapter.kind, adapter.cfg,
                        {"source": "base adapter (untrained)"})
        return 0
    rounds = []
    for bank in store.banks():  # banks() lists only banks with a valid version; latest() skips bad ones
        manifest = store.latest(bank).manifest
        if manifest["base_fingerprint"] != adapter.base_fingerprint:
            raise ValueError(f"bank store {store.root}: bank {bank} was made on base {manifest['base_fingerprint']}, "
                             f"this run's base is {adapter.base_fingerprint}; use another bank-store")
        if manifest["config"] != adapter.cfg.model_dump(mode="json"):
            raise ValueError(f"bank store {store.root}: bank {bank} holds a {manifest['kind']} adapter configured "
                             f"{manifest['config']}, this run asks for {adapter.cfg.model_dump(mode='json')}; "
                             "use another bank-store")
        rounds.append(int(manifest.get("round") or 0))
    if GENERAL not in store.banks():
        raise ValueError(f"bank store {store.root} has no {GENERAL!r} bank")
    return max(rounds)


app = build_server_app()
