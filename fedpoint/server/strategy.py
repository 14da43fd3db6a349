"""The coordinator's strategy: Flower's message-API FedAvg over adapter banks.

`BankStrategy` holds Flower's hooks and the state that lives across rounds (who each node is,
who went silent, the peer screens' memory, the ledger); the work of a round is elsewhere:

1. `configure_train` samples sites as FedAvg does, asks sites it has not met yet who they are
   (a "query" message: `intake.read_identity`), and sends each the latest version of the bank that
   fits it (`routing.route`: its task or modality bank, or the general bank) with a `RoundInstruction`.
   A site of several tasks is sent one of them a round, in turn (`routing.task_in_turn`, by its
   round count in the ledger), and the instruction names it.
   A site silent `policy.silent_rounds` times in a row gets only a short probe until it answers.
2. `aggregate_train` reads each reply (`intake.read_reply`) and runs the round pipeline
   (`fedpoint.server.round_pipeline`): optional clipping, the screens (`screen_round`), then
   `plan_updates` (each target bank's base, the rebased replies and the exact aggregate). A rejected
   or failed reply is logged with its site id and the round goes on without it.
3. `commit` writes the new versions to the `BankStore` (`version_writes`, one journaled commit) and
   the round's record to the ledger (`fedpoint.server.ledger`, federation.json). A restarted
   coordinator resumes from the store.

Bank versions are read through one `RoundReads` per round (`fedpoint.server.bank_reads`): each is
read and verified once. Every setting comes from one `CoordinatorPolicy` (`fedpoint.server.policy`).

What `aggregate_train` returns is the round's update of every bank (keys "<bank>/<param>"), so
that Flower's DP wrapper can add its noise before the banks are written. Which privacy variant runs
is chosen by name when the strategy is built (`build_strategy`, `PRIVACY`): "none" is
`BankStrategy`, which commits in `aggregate_train`; "central-dp" is `PrivateBankStrategy` around a
`NoisedBankStrategy`, which leaves the commit to the wrapper, after the noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_stdv

from fedpoint.server import round_pipeline as rp
from fedpoint.server.aggregate import check_rule
from fedpoint.server.bank_reads import RoundReads
from fedpoint.server.banks import BankStore
from fedpoint.server.checks import PeerScreen
from fedpoint.server.crashpoints import crash_point
from fedpoint.server.intake import error_text, read_evaluations, read_identity, read_replies
from fedpoint.server.ledger import RoundLedger
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.privacy_accountant import PrivacyAccountant, round_noise_multiplier
from fedpoint.server.records import Outcome, Reply, RoundPlan, Sent, SiteInfo
from fedpoint.server.registry import SiteRegistry
from fedpoint.server.routing import route, task_in_turn
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import decode_arrays, encode_arrays, payload_nbytes
from fedpoint.shared.protocol import printable
from fedpoint.shared.tasks import DEFAULT_TASK

BANK_SEPARATOR = "/"  # update keys are "<bank>/<parameter name>"; parameter names never hold "/"


class BankStrategy(FedAvg):
    """FedAvg whose "global model" is a set of adapter banks on disk (the "none" privacy variant)."""

    commits_round = True  # aggregate_train writes the round's versions itself

    def __init__(self, store: BankStore, policy: CoordinatorPolicy | None = None, *, fingerprint: str, schema: Mapping,
                 registry: SiteRegistry | None = None, summary_path: str | Path | None = None, round_offset: int = 0,
                 join_rounds: Mapping[str, int] | None = None):
        policy = policy or CoordinatorPolicy()
        # Flower's evaluate stage is the federated evaluation round: the sites that trained score
        # the bank versions the round produced (`configure_evaluate`, `aggregate_evaluate`).
        super().__init__(fraction_train=policy.fraction_train, fraction_evaluate=1.0 if policy.evaluate_banks else 0.0,
                         min_train_nodes=policy.min_train_nodes, min_evaluate_nodes=0,
                         min_available_nodes=policy.min_train_nodes)
        check_rule(policy.aggregation_rule, policy.adapter.kind, policy.adapter)
        self.policy, self.store, self.registry = policy, store, registry
        self.fingerprint, self.schema = fingerprint, dict(schema)  # the base's, and its adapter's parameters
        self.round_offset = round_offset
        self.reads = RoundReads(store)  # this round's bank versions, each read and verified once
        self.sites: dict[int, SiteInfo] = {}
        self.sent: dict[int, Sent] = {}
        self.evaluating: dict[int, Sent] = {}  # the federated evaluation round's sends, per node
        self.ledger = RoundLedger(summary_path)
        self.plan: RoundPlan | None = None  # the round between aggregation and commit
        self.screen = PeerScreen(policy.screen)
        self.silent: dict[int, int] = {}  # node -> timeouts in a row (identity query, training, evaluation)
        self.dropped: dict[int, str] = {}  # this round: nodes left out for their silence, with why
        self.refused_nodes: dict[int, str] = {}  # nodes whose identity was refused, with why
        self.join_rounds = dict(join_rounds or {})  # simulation: site id -> rounds it misses before joining
        self._restore_ledger()

    @property
    def rule(self) -> str:
        return self.policy.aggregation_rule

    @property
    def summary_path(self) -> Path | None:
        """federation.json, where the ledger is kept (None: in memory only)."""
        return self.ledger.path

    def summary(self) -> None:
        log(INFO, "\t├──> Adapter banks: %s (routing %r) in %s", ", ".join(self.store.banks()) or "none",
            self.policy.routing, self.store.root)
        log(INFO, "\t├──> Reply screening: norm factor %g, clip norm %s", self.policy.screen.norm_factor,
            self.policy.clip_norm or "off")
        super().summary()

    def federation_round(self, server_round: int) -> int:
        """Flower counts this run's rounds from 1; banks count the federation's rounds."""
        return self.round_offset + server_round

    # ------------------------------------------------------------------------ configure
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        crash_point("round-start", self.federation_round(server_round))
        self.reads = RoundReads(self.store)
        sample_size = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        node_ids, all_nodes = sample_nodes(grid, self.min_available_nodes, sample_size)
        if self.join_rounds:  # simulation: sample only among the sites that have joined by this round
            node_ids = self.joined_sample(grid, all_nodes, server_round)
        log(INFO, "configure_train: sampled %d sites (out of %d)", len(node_ids), len(all_nodes))
        node_ids = self.leave_out_silent(grid, node_ids, server_round)
        self.identify(grid, node_ids)
        self.sent = {}
        for node in node_ids:
            if node in self.refused_nodes:
                log(WARNING, "round %d: not sending to node %d: %s", self.federation_round(server_round), node,
                    self.refused_nodes[node])
        return [self.instruct(node, server_round, config) for node in node_ids if node not in self.refused_nodes]

    def joined_sample(self, grid: Grid, all_nodes: list[int], server_round: int) -> list[int]:
        """The nodes to train this round when sites join late (simulation, `join_rounds`): a site with
        join round j takes part from federation round j + 1, and FedAvg's fraction applies to the
        sites that have joined. Nodes of sites without a join round count as joined."""
        self.identify(grid, all_nodes)  # who is who: an identity query trains nothing
        fed_round = self.federation_round(server_round)
        joined = [n for n in all_nodes if self.join_rounds.get(self._site_name(n), 0) < fed_round]
        waiting = sorted(self._site_name(n) for n in all_nodes if n not in joined)
        if waiting:
            log(INFO, "round %d: not joined yet, not sampled: %s", fed_round, printable(", ".join(waiting), 400))
        size = min(len(joined), max(int(len(joined) * self.fraction_train), self.min_train_nodes))
        return sorted(random.sample(joined, size))

    def leave_out_silent(self, grid: Grid, node_ids: list[int], server_round: int) -> list[int]:
        """Nodes silent `silent_rounds` times in a row (no answer to an identity query, a training or
        an evaluation within its timeout) get only a short query (`probe_timeout`) instead of a round:
        one that answers is back in this round, the others are left out until they answer. So a site
        that left costs the others one probe a round, not a round timeout."""
        self.dropped = {}
        limit, probe = self.policy.silent_rounds, self.policy.probe_timeout
        quiet = [n for n in node_ids if limit and self.silent.get(n, 0) >= limit]
        if not quiet:
            return node_ids
        answered = {m.metadata.src_node_id for m in grid.send_and_receive(_queries(quiet), timeout=probe)}
        fed_round = self.federation_round(server_round)
        for node in quiet:
            if node in answered:
                self.silent[node] = 0
                log(INFO, "round %d: site %s (node %d) answers again; it is back", fed_round,
                    printable(self._site_name(node)), node)
            else:
                self.dropped[node] = f"silent {self.silent[node]} times in a row: left out until it answers (probed for {probe:g} s)"
                log(WARNING, "round %d: site %s (node %d) %s", fed_round, printable(self._site_name(node)), node,
                    self.dropped[node])
        return [n for n in node_ids if n not in self.dropped]

    def note_silence(self, asked: Iterable[int], answered: Iterable[int]) -> None:
        """Count timeouts in a row per node: reset by any answer (an error is an answer)."""
        answered = set(answered)
        for node in asked:
            self.silent[node] = 0 if node in answered else self.silent.get(node, 0) + 1

    def identify(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask sites not met yet for their id and modality (one small query message each)."""
        unknown = [n for n in node_ids if n not in self.sites]
        if not unknown:
            return
        answered = set()
        for reply in grid.send_and_receive(_queries(unknown), timeout=self.policy.query_timeout):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                log(WARNING, "site on node %d did not say who it is: %s", node, error_text(reply.error))
                continue
            try:
                self.sites[node] = read_identity(node, reply, self.sites, self.registry)
            except ValueError as err:
                self.refused_nodes[node] = f"identity refused: {err}"
                log(WARNING, "node %d: identity refused, the federation goes on without it: %s", node, err)
        self.note_silence(unknown, answered)
        for node in unknown:
            if node in self.sites:
                log(INFO, "site %s (%s) is node %d", printable(self.sites[node].site_id),
                    printable(self.sites[node].modality), node)
            elif node not in answered:
                log(WARNING, "node %d did not answer the identity query in %g s", node, self.policy.query_timeout)

    def task_for(self, node_id: int) -> tuple[str | None, str]:
        """(task, why) one node works on this round: its only task, or for a site of several the next
        in turn by its round count in the ledger (`routing.task_in_turn`; why is "" for one task)."""
        info = self.sites.get(node_id)
        if info is None:
            return None, ""
        return task_in_turn(info.tasks, self.ledger.rounds_sent(info.site_id) if len(info.tasks) > 1 else 0)

    def route_for(self, node_id: int, task: str | None) -> tuple[str, str]:
        """(bank, why) for one node working on `task`: that task's bank, its modality bank or the
        general one (`routing.route`)."""
        info = self.sites.get(node_id)
        return route(info.modality if info else None, self.policy.routing, self.reads.banks(), task)

    def instruct(self, node_id: int, server_round: int, config: Mapping | None = None,
                 message_type: str = MessageType.TRAIN, choice: tuple[str | None, str] | None = None) -> Message:
        """The train (or evaluate) message for one node: its bank's latest version and the round
        instruction. `choice`: (task, why) to send it (None: `task_for`, the task in turn)."""
        state = self.assign(node_id, choice)
        sent = self.sent[node_id]
        info = self.sites.get(node_id)
        named = {"task": sent.task or DEFAULT_TASK} if info is not None and len(info.tasks) > 1 else {}
        instruction = P.RoundInstruction(server_round=self.federation_round(server_round), bank=sent.bank,
                                         bank_version=sent.version, base_fingerprint=self.fingerprint,
                                         **self.policy.settings, **named)
        content = RecordDict({
            P.ARRAYS: encode_arrays(state),
            P.CONFIG: ConfigRecord({**dict(config or {}), **instruction.to_config()}),
        })
        return Message(content, dst_node_id=node_id, message_type=message_type)

    def assign(self, node_id: int, choice: tuple[str | None, str] | None = None) -> dict[str, np.ndarray]:
        """Note what one node is sent this round (for its task, the task's bank's latest version) and
        return that state. `choice`: (task, why), None: the task in turn (`task_for`)."""
        task, task_why = choice if choice is not None else self.task_for(node_id)
        bank, why = self.route_for(node_id, task)
        latest = self.reads.latest(bank)
        state = {name: latest.state[name] for name in self.schema}
        self.sent[node_id] = Sent(bank, latest.version, payload_nbytes(state), f"{task_why}: {why}" if task_why else why,
                                  task)
        return state

    # ------------------------------------------------------------------------ aggregate
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        parsed, outcomes = read_replies(replies, self.sent, self.sites)
        return self.aggregate_replies(server_round, parsed, outcomes)

    def aggregate_replies(self, server_round: int, parsed: Mapping[int, Reply],
                          outcomes: dict[int, Outcome]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's readable replies (node -> Reply; `outcomes` already holds the failed and
        unreadable ones) through the round pipeline, and (in this variant) committed. Free of
        Flower messages, so a synthetic federation can drive it."""
        fed_round = self.federation_round(server_round)
        parsed = rp.clip_replies(parsed, self.policy.clip_norm, self.schema)
        accepted, notes = rp.screen_round(parsed, outcomes, sites=self.sites, screen=self.screen, bound=self.bound_for,
                                          schema=self.schema, fingerprint=self.fingerprint, policy=self.policy,
                                          weight_caps=self.registry.max_weights() if self.registry else None)
        self._log_round(fed_round, notes, outcomes)
        self.plan = RoundPlan(server_round, accepted, outcomes)
        self.plan.updates = rp.plan_updates(accepted, self.reads, sites=self.sites, schema=self.schema, policy=self.policy)
        metrics = MetricRecord(rp.round_metrics(accepted, outcomes))
        record = None
        if self.plan.updates:
            record = encode_arrays({f"{bank}{BANK_SEPARATOR}{name}": value for bank, planned in self.plan.updates.items()
                                    for name, value in planned.update.items()}, dtype=np.float32)
        if self.commits_round:
            self.commit(server_round, record)
        return record, metrics

    def _log_round(self, fed_round: int, notes: list[str], outcomes: Mapping[int, Outcome]) -> None:
        for note in notes:
            log(WARNING, "round %d: %s", fed_round, printable(note, 400))
        self.note_silence(self.sent, outcomes)
        for node in self.sent:
            if node not in outcomes:
                log(WARNING, "round %d: site %s (node %d) sent no reply within the round timeout", fed_round,
                    printable(self._site_name(node)), node)
        for node, outcome in sorted(outcomes.items()):
            if outcome.status in ("rejected", "failed"):
                log(WARNING, "round %d: %s the reply of site %s (node %d): %s", fed_round,
                    "rejected" if outcome.status == "rejected" else "failed:", printable(self._site_name(node)), node,
                    printable(outcome.reason, 400))

    def bound_for(self, bank: str) -> float:
        """The absolute L2 bound on a delta into `bank` (`round_pipeline.bank_bound`)."""
        return rp.bank_bound(self.reads, bank, self.schema, self.policy)

    def targets(self, reply: Reply) -> list[str]:
        """The banks a reply updates (`round_pipeline.targets`)."""
        return rp.targets(reply, self.sites, self.policy.routing)

    # ------------------------------------------------------------------------ commit
    def commit(self, server_round: int, updates: ArrayRecord | None, dp: Mapping | None = None) -> dict[str, int]:
        """Write each bank's new version (its base + the update as released) and the round's record."""
        plan = self.plan if self.plan and self.plan.server_round == server_round else None
        fed_round = self.federation_round(server_round)
        writes = rp.version_writes(plan, _split_updates(updates), self.reads, fed_round=fed_round, schema=self.schema,
                                   fingerprint=self.fingerprint, policy=self.policy, bound=self.bound_for, dp=dp)
        entry = self._round_entry(fed_round, plan, {}, dp)
        crash_point("before-commit", fed_round)
        # Journaled even when it wrote nothing: a restart resumes after the journal's last round.
        versions = self.store.commit_round(fed_round, writes, {"entry": entry.as_json(), "screen": self.screen.state()})
        crash_point("after-commit", fed_round)
        self.reads = RoundReads(self.store)  # the new versions: served from here on
        for bank, version in versions.items():
            log(INFO, "round %d: bank %s -> v%d", fed_round, bank, version)
        self.ledger.record(self._round_entry(fed_round, plan, versions, dp))
        crash_point("after-ledger", fed_round)
        self.plan = None
        return versions

    def _round_entry(self, fed_round: int, plan: RoundPlan | None, versions: Mapping[str, int], dp: Mapping | None):
        return rp.round_entry(fed_round, sent=self.sent, plan=plan, sites=self.sites, dropped=self.dropped,
                              refused=self.refused_nodes, versions=versions, dp=dp)

    # ------------------------------------------------------------------------ federated evaluation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """After aggregation: each site of this round gets the newest version of its bank (of the
        task it trained: the one it will train from next on that task) to score on its held-out
        cached cases of that task."""
        if self.fraction_evaluate == 0.0:
            return []
        trained, self.evaluating = dict(self.sent), {}
        messages = []
        for node in sorted(n for n in trained if self.silent.get(n, 0) == 0):  # a node silent in training is not asked
            # the task it trained: its bank's new version is scored on that task's held-out cases
            messages.append(self.instruct(node, server_round, config, MessageType.EVALUATE, (trained[node].task, "")))
            self.evaluating[node] = self.sent[node]
        self.sent = trained  # `instruct` notes what it sends; the round's ledger keeps the train sends
        log(INFO, "round %d: asking %d site(s) to score the new bank versions", self.federation_round(server_round),
            len(messages))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Check each site's scores (`intake.read_evaluations`), sum them per bank version with each
        version's scores bounded by the other sites' (`round_pipeline.evaluation_summary`), then
        write the summary beside each bank version and into federation.json."""
        fed_round = self.federation_round(server_round)
        per_site, per_version, answered = read_evaluations(replies, self.evaluating, self.sites, self.registry)
        for name, row in per_site.items():
            if row["status"] == "refused":
                log(WARNING, "round %d: evaluation reply of %s refused: %s", fed_round, printable(name), row["reason"])
        self.note_silence(self.evaluating, answered)
        summary, notes = rp.evaluation_summary(fed_round, per_version)
        for note in notes:
            log(WARNING, "round %d: %s", fed_round, printable(note, 300))
        for key, entry in summary.items():
            bank, _, version = key.rpartition("@v")
            self.store.record_evaluation(bank, int(version), entry)
            log(INFO, "round %d: %s scored by %d site(s) on %d held-out case(s): Dice-AUC %.3f", fed_round, key,
                entry["sites"], entry["cases"], entry["dice_auc"])
        self.ledger.add_evaluation(fed_round, summary, per_site)
        crash_point("after-evaluate", fed_round)
        if not summary:
            return None
        cases = sum(e["cases"] for e in summary.values())
        return MetricRecord({"eval-cases": cases,
                             "eval-dice-auc": sum(e["cases"] * e["dice_auc"] for e in summary.values()) / cases})

    # ------------------------------------------------------------------------ across restarts
    def _restore_ledger(self) -> None:
        """Rounds the bank store committed but federation.json missed (a crash in between) are
        added back from the store's journal; the peer screens resume from the last entry."""
        journal = self.store.journal()
        restored = self.ledger.restore(journal)
        if restored:
            log(WARNING, "federation.json lacked round(s) %s; restored them from the bank store's journal",
                ", ".join(str(r) for r in restored))
        if journal:
            self.screen.load(journal[-1].get("summary", {}).get("screen"))

    def _site_name(self, node: int) -> str:
        return self.sites[node].site_id if node in self.sites else f"node-{node}"


class NoisedBankStrategy(BankStrategy):
    """The bank strategy inside Flower's central-DP wrapper: `aggregate_train` hands the round's
    update to `PrivateBankStrategy`, which commits it once the noise is added."""

    commits_round = False


class PrivateBankStrategy(DifferentialPrivacyClientSideFixedClipping):
    """Flower's central DP with client-side fixed clipping around the bank strategy: sites clip
    their deltas (`fixedclipping_mod`), Flower adds Gaussian noise to each bank's aggregated update,
    and only then are the banks written. Flower skips a round in which any site failed."""

    def __init__(self, banks: NoisedBankStrategy, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
                 accountant: PrivacyAccountant | None = None):
        if banks.commits_round:  # it would write every round's versions before the noise
            raise TypeError(f"central DP wraps a NoisedBankStrategy, not a {type(banks).__name__}")
        super().__init__(banks, noise_multiplier, clipping_norm, num_sampled_clients)
        self.privacy = accountant  # fedpoint's (Flower's own `accountant` refuses weighted, screened rounds)
        self.available = num_sampled_clients

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.num_sampled_clients = max(len(messages), 1)  # the noise scale divides by the real sample
        self.available = max(len(list(grid.get_node_ids())), self.num_sampled_clients)
        if self.privacy is not None:  # stop before a round the budget cannot pay for (projected as the last one)
            last = self.privacy.events[-1][1] if self.privacy.events else self.noise_multiplier
            self.privacy.check_next(self.num_sampled_clients / self.available, last, self.strategy.federation_round(server_round))
        return messages

    def noise_stdv(self) -> float:
        return compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, metrics = super().aggregate_train(server_round, replies)
        dp = {"noise_multiplier": self.noise_multiplier, "clipping_norm": self.clipping_norm,
              "sampled_sites": self.num_sampled_clients, "noise_stdv": self.noise_stdv(), "mechanism": "client-side fixed clipping"}
        if self.privacy is not None:
            dp |= self.account(server_round, released=updates is not None)
        self.strategy.commit(server_round, updates, dp)
        if metrics is not None:
            metrics["dp-noise-multiplier"] = float(self.noise_multiplier)
            metrics["dp-noise-stdv"] = float(dp["noise_stdv"])
        return updates, metrics

    def account(self, server_round: int, released: bool) -> dict:
        """The round's event for the accountant (when noised updates are released) and epsilon after
        it; BudgetExceeded, before anything is written, when this very round would pass the budget."""
        bank = self.strategy
        plan = bank.plan if bank.plan and bank.plan.server_round == server_round else None
        out = {"delta": self.privacy.delta, "sampling_rate": self.num_sampled_clients / self.available,
               "accountant": "RDP (dp-accounting)"}
        shares = rp.weight_shares(plan.accepted, bank.targets) if released and plan else {}
        z = round_noise_multiplier(self.noise_stdv(), self.clipping_norm, shares)
        if math.isfinite(z):  # inf: no site's delta moved any bank (all weights 0), nothing to count
            self.privacy.check_next(out["sampling_rate"], z, bank.federation_round(server_round))
            out["effective_noise_multiplier"] = z
            self.privacy.record(out["sampling_rate"], z)
        out["epsilon"] = self.privacy.epsilon()
        return out


PRIVACY = ("none", "central-dp")  # the privacy variants, by name (CoordinatorConfig.privacy)


def build_strategy(privacy: str, store: BankStore, policy: CoordinatorPolicy | None = None, *, noise_multiplier: float = 0.0,
                   clipping_norm: float = 1.0, accountant: PrivacyAccountant | None = None,
                   **facts) -> BankStrategy | PrivateBankStrategy:
    """The strategy Flower runs for a privacy variant; `facts` are BankStrategy's keywords (the
    base's fingerprint and schema, the registry, the ledger's path, the round offset). Under central
    DP the noise scale starts from `min_train_nodes` sites (it follows the real sample each round),
    and `accountant` (if given) counts epsilon and stops at its budget.
    The bank strategy itself is the result under "none", its `.strategy` under "central-dp"."""
    if privacy == "none":
        return BankStrategy(store, policy, **facts)
    if privacy == "central-dp":
        banks = NoisedBankStrategy(store, policy, **facts)
        if accountant is not None and banks.rule != "weighted-mean":
            raise ValueError(f"the privacy accountant counts the weighted-mean rule, not {banks.rule!r}: "
                             "set aggregation-rule = \"weighted-mean\" under central DP")
        return PrivateBankStrategy(banks, noise_multiplier, clipping_norm, banks.min_train_nodes, accountant)
    raise ValueError(f"unknown privacy variant {privacy!r} (known: {', '.join(PRIVACY)})")


def bank_strategy_of(runner: BankStrategy | PrivateBankStrategy) -> BankStrategy:
    """The bank strategy a runner from `build_strategy` drives (the one that keeps the ledger)."""
    return runner if isinstance(runner, BankStrategy) else runner.strategy


# ------------------------------------------------------------------------------ helpers
def _queries(nodes: Iterable[int]) -> list[Message]:
    """The identity query (also a silent node's probe): an empty config, answered with who the site is."""
    return [Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes]


def _split_updates(record: ArrayRecord | None) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in decode_arrays(record).items():
        bank, _, name = key.partition(BANK_SEPARATOR)
        out.setdefault(bank, {})[name] = array
    return out
