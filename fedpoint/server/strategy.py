"""The coordinator's strategy: Flower's message-API FedAvg over adapter banks.

Each round:
1. `configure_train` samples sites as FedAvg does, asks sites it has not met yet who they are
   (a "query" message: site id and modality), and sends each the latest version of the bank that
   fits it (its modality bank, or the general bank), with a `RoundInstruction`.
2. `aggregate_train` turns replies into `Reply` objects and `aggregate_replies` screens them
   (`screen_round`: structure, then each peer group's `PeerScreen`, weights and reported scores),
   optionally clips them, and aggregates them exactly (`aggregate`) into every bank they update:
   the general bank and, under "banks", their modality bank (created from the bank they trained from
   the first time a site of that modality replies). A rejected or failed reply is logged with its
   site id and the round goes on without it; a site silent `silent_rounds` times in a row gets only
   a short probe until it answers again (`leave_out_silent`).
3. The new versions are written to the `BankStore`, which is also where a restarted coordinator
   resumes from (round numbers continue from the latest version's round), and the round's record
   to the round ledger (`fedpoint.server.ledger`, federation.json).

What `aggregate_train` returns is the round's update of every bank (keys "<bank>/<param>"), so
that Flower's DP wrapper can add its noise before the banks are written. Which variant runs is
chosen by name when the strategy is built (`build_strategy`, `PRIVACY`): "none" is
`BankStrategy`, which commits in `aggregate_train`; "central-dp" is `PrivateBankStrategy` around a
`NoisedBankStrategy`, which leaves the commit to the wrapper, after the noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_stdv

from fedpoint.server.aggregate import aggregate, check_rule, round_record
from fedpoint.server.banks import BankStore
from fedpoint.server.checks import (HISTORY_VERSIONS, PeerScreen, Reply, ScreenSettings, bound_metrics, bounded_scores,
                                    cap_shares,
                                    clip_delta, clip_weights, delta_norm, norm_bound, structural_problem)
from fedpoint.server.crashpoints import crash_point
from fedpoint.server.ledger import RoundLedger, RoundRecord, SiteRound
from fedpoint.server.privacy_accountant import PrivacyAccountant, round_noise_multiplier
from fedpoint.server.registry import SiteRegistry
from fedpoint.server.routing import GENERAL, banks_to_update, modality_bank, route, task_bank
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError, decode_arrays, encode_arrays, payload_nbytes
from fedpoint.shared.protocol import printable

BANK_SEPARATOR = "/"  # update keys are "<bank>/<parameter name>"; parameter names never hold "/"


@dataclass(frozen=True)
class SiteInfo:
    site_id: str
    modality: str
    task: str | None = None  # the structure it declared (normalised): its task bank


@dataclass(frozen=True)
class Outcome:
    """What became of one node's reply: accepted, rejected (with why), failed, no reply, skipped."""

    status: str
    reason: str | None = None
    reply: Reply | None = None
    note: str | None = None  # what the screens did to an accepted reply (clipped, no weight, re-admitted)


@dataclass(frozen=True)
class Sent:
    """What one node was sent this round."""

    bank: str
    version: int
    nbytes: int
    route: str = ""  # why this bank (routing.route)


class BankStrategy(FedAvg):
    """FedAvg whose "global model" is a set of adapter banks on disk (the "none" privacy variant)."""

    commits_round = True  # aggregate_train writes the round's versions itself

    def __init__(self, store: BankStore, *, fingerprint: str, schema: Mapping, settings: Mapping,
                 bank_strategy: str = "banks", norm_factor: float = 5.0, clip_norm: float = 0.0,
                 round_offset: int = 0, fraction_train: float = 1.0, min_train_nodes: int = 2,
                 query_timeout: float = 120.0, summary_path: str | Path | None = None,
                 registry: SiteRegistry | None = None, aggregation_rule: str = "weighted-mean",
                 trim_fraction: float = 0.2, weight_cap_factor: float = 4.0, norm_cap_rms: float = 0.0,
                 history_factor: float = 10.0, drift_window: int = 3, drift_ratio: float = 2.0,
                 join_rounds: Mapping[str, int] | None = None, evaluate_banks: bool = False,
                 screen: ScreenSettings | None = None, max_share: float = 0.5, silent_rounds: int = 2,
                 probe_timeout: float = 30.0):
        # Flower's evaluate stage is the federated evaluation round: the sites that trained score
        # the bank versions the round produced (`configure_evaluate`, `aggregate_evaluate`).
        super().__init__(fraction_train=fraction_train, fraction_evaluate=1.0 if evaluate_banks else 0.0,
                         min_train_nodes=min_train_nodes, min_evaluate_nodes=0, min_available_nodes=min_train_nodes)
        self.store = store
        self.fingerprint = fingerprint
        self.schema = dict(schema)
        self.settings = dict(settings)
        self.bank_strategy = bank_strategy
        self.norm_factor = norm_factor
        self.clip_norm = clip_norm
        self.round_offset = round_offset
        self.query_timeout = query_timeout
        self.summary_path = Path(summary_path) if summary_path else None
        self.sites: dict[int, SiteInfo] = {}
        self.sent: dict[int, Sent] = {}
        self.evaluating: dict[int, Sent] = {}  # the federated evaluation round's sends, per node
        self.ledger = RoundLedger(self.summary_path)
        self._pending: dict | None = None
        self.registry = registry
        self.rule = check_rule(aggregation_rule, self.settings["adapter"].kind, self.settings["adapter"])
        self.trim_fraction = trim_fraction
        self.weight_cap_factor = weight_cap_factor
        self.norm_cap_rms = norm_cap_rms
        self.history_factor = history_factor
        self.screen = PeerScreen(replace(screen or ScreenSettings(), norm_factor=norm_factor,
                                         drift_window=drift_window, drift_ratio=drift_ratio))
        self.max_share = max_share
        self.silent_rounds = silent_rounds  # a node silent this many times in a row is left out until it answers
        self.probe_timeout = min(probe_timeout, query_timeout)
        self.silent: dict[int, int] = {}  # node -> timeouts in a row (identity query, training, evaluation)
        self.dropped: dict[int, str] = {}  # this round: nodes left out for their silence, with why
        self.refused_nodes: dict[int, str] = {}  # nodes whose identity was refused, with why
        self.join_rounds = dict(join_rounds or {})  # simulation: site id -> rounds it misses before joining
        self._restore_ledger()

    def summary(self) -> None:
        log(INFO, "\t├──> Adapter banks: %s (strategy %r) in %s", ", ".join(self.store.banks()) or "none",
            self.bank_strategy, self.store.root)
        log(INFO, "\t├──> Reply screening: norm factor %g, clip norm %s", self.norm_factor, self.clip_norm or "off")
        super().summary()

    # ------------------------------------------------------------------------ configure
    def federation_round(self, server_round: int) -> int:
        """Flower counts this run's rounds from 1; banks count the federation's rounds."""
        return self.round_offset + server_round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        crash_point("round-start", self.federation_round(server_round))
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
        import random

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
        quiet = [n for n in node_ids if self.silent_rounds and self.silent.get(n, 0) >= self.silent_rounds]
        if not quiet:
            return node_ids
        queries = [Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in quiet]
        answered = {m.metadata.src_node_id for m in grid.send_and_receive(queries, timeout=self.probe_timeout)}
        fed_round = self.federation_round(server_round)
        for node in quiet:
            if node in answered:
                self.silent[node] = 0
                log(INFO, "round %d: site %s (node %d) answers again; it is back", fed_round,
                    printable(self._site_name(node)), node)
            else:
                self.dropped[node] = (f"silent {self.silent[node]} times in a row: left out until it answers "
                                      f"(probed for {self.probe_timeout:g} s)")
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
        queries = [Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in unknown]
        answered = set()
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                log(WARNING, "site on node %d did not say who it is: %s", node, error_text(reply.error))
                continue
            try:
                self.sites[node] = self.resolve_identity(node, reply)
            except ValueError as err:
                self.refused_nodes[node] = f"identity refused: {err}"
                log(WARNING, "node %d: identity refused, the federation goes on without it: %s", node, err)
        self.note_silence(unknown, answered)
        for node in unknown:
            if node in self.sites:
                log(INFO, "site %s (%s) is node %d", printable(self.sites[node].site_id),
                    printable(self.sites[node].modality), node)
            elif node not in answered:
                log(WARNING, "node %d did not answer the identity query in %g s", node, self.query_timeout)

    def resolve_identity(self, node: int, reply: Message) -> SiteInfo:
        """The site a node is: its claims validated, then bound by the registry (deployment) or,
        without one, to the first node that claims that id (simulation: the partition plays the node)."""
        unknown = sorted(set(reply.content.keys()) - {P.CONFIG})
        if unknown:
            raise ValueError(f"the answer holds records {printable(', '.join(unknown))} besides {P.CONFIG!r}")
        config = reply.content.config_records.get(P.CONFIG, {})
        extra = sorted(set(config) - {P.SITE_ID, P.MODALITY, P.TASK})
        if extra:
            raise ValueError(f"the answer holds fields {printable(', '.join(extra))} besides site id, modality and task")
        site_id = P.check_site_id(config.get(P.SITE_ID))
        modality = P.check_modality(config.get(P.MODALITY))
        task = declared_task(config.get(P.TASK))
        from fedpoint.server.routing import modality_bank

        modality_bank(modality)  # a modality that gives no bank name is refused here, not mid-round
        if self.registry is not None:
            entry = self.registry.resolve(node, site_id, modality)
            return SiteInfo(entry.site_id, entry.modality if entry.modality is not None else modality, task)
        holder = next((n for n, i in self.sites.items() if i.site_id == site_id and n != node), None)
        if holder is not None:
            raise ValueError(f"node {node} claims site {site_id!r}, which is node {holder}")
        return SiteInfo(site_id, modality, task)

    def bank_for(self, node_id: int) -> str:
        return self.route_for(node_id)[0]

    def route_for(self, node_id: int) -> tuple[str, str]:
        """(bank, why) for one node: its task bank, modality bank or the general one (`routing.route`)."""
        info = self.sites.get(node_id)
        return route(info.modality if info else None, self.bank_strategy, self.store.banks(), info.task if info else None)

    def instruct(self, node_id: int, server_round: int, config: Mapping | None = None,
                 message_type: str = MessageType.TRAIN) -> Message:
        """The train (or evaluate) message for one node: its bank's latest version and the round instruction."""
        state = self.assign(node_id)
        sent = self.sent[node_id]
        instruction = P.RoundInstruction(server_round=self.federation_round(server_round), bank=sent.bank,
                                         bank_version=sent.version, base_fingerprint=self.fingerprint, **self.settings)
        content = RecordDict({
            P.ARRAYS: encode_arrays(state),
            P.CONFIG: ConfigRecord({**dict(config or {}), **instruction.to_config()}),
        })
        return Message(content, dst_node_id=node_id, message_type=message_type)

    def assign(self, node_id: int) -> dict[str, np.ndarray]:
        """Note what one node is sent this round (its bank's latest version) and return that state."""
        bank, why = self.route_for(node_id)
        latest = self.store.latest(bank)
        state = {name: latest.state[name] for name in self.schema}
        self.sent[node_id] = Sent(bank, latest.version, payload_nbytes(state), why)
        return state

    # ------------------------------------------------------------------------ aggregate
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [m for m in replies if m.metadata.src_node_id in self.sent]  # only nodes asked this round
        valid = [m for m in replies if not m.has_error()]
        outcomes = {m.metadata.src_node_id: Outcome("failed", error_text(m.error)) for m in replies if m.has_error()}
        parsed: dict[int, Reply] = {}
        for msg in valid:
            try:
                parsed[msg.metadata.src_node_id] = self.to_reply(msg)
            except (KeyError, TypeError, ValueError, EgressError) as err:
                outcomes[msg.metadata.src_node_id] = Outcome("rejected", f"unreadable reply: {printable(str(err), 300)}")
        return self.aggregate_replies(server_round, parsed, outcomes)

    def aggregate_replies(self, server_round: int, parsed: Mapping[int, Reply],
                          outcomes: dict[int, Outcome]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's readable replies (node -> Reply; `outcomes` already holds the failed and
        unreadable ones) screened, aggregated into every bank they update, and (in this variant)
        committed. Free of Flower messages, so a synthetic federation can drive it."""
        fed_round = self.federation_round(server_round)
        if self.clip_norm > 0:  # clip instead of reject: before the size screens
            parsed = {n: replace(r, delta=clip_delta(r.delta, self.clip_norm)[0]) if _finite(r.delta) else r
                      for n, r in parsed.items()}
        accepted, notes = self.screen_round(fed_round, parsed, outcomes)
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
        updates, bases = self.bank_updates(accepted)
        self._pending = {"round": server_round, "accepted": accepted, "bases": bases, "outcomes": outcomes}
        metrics = self.aggregate_metrics(accepted, outcomes)
        if not updates:
            if self.commits_round:
                self.commit(server_round, None)
            return None, metrics
        record = encode_arrays({f"{bank}{BANK_SEPARATOR}{name}": value for bank, update in updates.items()
                                for name, value in update.items()}, dtype=np.float32)
        if self.commits_round:
            self.commit(server_round, record)
        return record, metrics

    def to_reply(self, msg: Message) -> Reply:
        node = msg.metadata.src_node_id
        sent = self.sent.get(node)
        if sent is None:
            raise ValueError(f"node {node} was not asked to train this round")
        config = msg.content.config_records.get(P.CONFIG, {})
        metrics = dict(msg.content.metric_records.get(P.METRICS, {}))
        arrays = msg.content.array_records.get(P.ARRAYS)
        if arrays is None:
            raise ValueError("no adapter arrays in the reply")
        extra = sorted(set(msg.content.keys()) - {P.ARRAYS, P.METRICS, P.CONFIG})
        if extra:
            raise ValueError(f"reply holds records besides arrays, metrics and config: {', '.join(extra)}")
        if len(msg.content.array_records) != 1 or len(msg.content.metric_records) > 1 or len(msg.content.config_records) > 1:
            raise ValueError("reply holds more than one record of a kind")
        unknown = sorted(set(config) - P.REPLY_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"reply config holds unknown fields {', '.join(unknown)}")
        P.check_reply_config(config)
        if node not in self.sites:
            raise ValueError(f"node {node} has no identity (it did not answer the identity query)")
        claimed = config.get(P.SITE_ID, "")
        if claimed and claimed != self.sites[node].site_id:
            raise ValueError(f"reply claims to come from site {claimed!r}, but node {node} is site {self.sites[node].site_id!r}")
        modality = config.get(P.MODALITY, "")
        if modality and modality != self.sites[node].modality:
            raise ValueError(f"reply claims modality {modality!r}, but site {self.sites[node].site_id!r} is {self.sites[node].modality!r}")
        task = declared_task(config.get(P.TASK))
        if task != self.sites[node].task:
            raise ValueError(f"reply claims task {task!r}, but site {self.sites[node].site_id!r} declared {self.sites[node].task!r}")
        for key, expected in ((P.BANK, sent.bank), (P.BANK_VERSION, sent.version)):
            if key in config and config[key] != expected:
                raise ValueError(f"reply says it trained from {key} {config[key]!r}, but {expected!r} was sent")
        return Reply(site_id=self.sites[node].site_id, bank=sent.bank, bank_version=sent.version,
                     delta=decode_arrays(arrays), weight=metrics.pop(P.NUM_EXAMPLES, 0),
                     fingerprint=str(config.get(P.BASE_FINGERPRINT, "")), metrics=metrics)

    def bound_for(self, bank: str) -> float:
        """The absolute L2 bound on a delta into `bank`: the kind's cap, tightened by the bank's history."""
        n_values = int(sum(int(np.prod(shape)) for shape, _ in self.schema.values()))
        history = []
        for version in self.store.versions(bank)[-HISTORY_VERSIONS:]:
            if self.store.check(bank, version) is None:
                history.append(float((self.store.get(bank, version).manifest.get("screen") or {}).get("max_norm") or 0))
        return norm_bound(self.settings["adapter"].kind, n_values, history, self.history_factor, self.norm_cap_rms)

    def peer_group(self, reply: Reply) -> str:
        """Whom a reply is compared with: the sites of the same modality (named by their modality
        bank). Within a round they all trained from the same bank (routing depends on the modality
        only), and a lone modality is never judged against another one's majority. The group keeps
        its name when its sites move from the general bank to their own, so its memory carries on."""
        info = next((i for i in self.sites.values() if i.site_id == reply.site_id), None)
        if info is not None and info.task and task_bank_or_none(info.task):  # a task's sites trained from their task's banks
            return task_bank_or_none(info.task)
        modality = self._modality(reply.site_id)
        return modality_bank(modality) if modality else reply.bank

    def screen_round(self, fed_round: int, parsed: Mapping[int, Reply],
                     outcomes: dict[int, "Outcome"]) -> tuple[list[Reply], list[str]]:
        """The screens on one round's readable replies: structure, then each peer group's size and
        direction screens (`PeerScreen`), then weights (clipped, shares capped) and the reported
        scores (bounded by the others'). Fills `outcomes`; returns the replies to aggregate, in node
        order, and notes to log."""
        groups: dict[str, list[tuple[int, Reply]]] = {}
        for node, reply in sorted(parsed.items()):
            groups.setdefault(self.peer_group(reply), []).append((node, reply))
        counted: list[tuple[int, Reply]] = []
        notes: dict[int, str] = {}
        for group, members in sorted(groups.items()):
            well_formed = []
            for node, reply in members:
                problem = structural_problem(reply, self.schema, self.fingerprint)
                if problem:
                    outcomes[node] = Outcome("rejected", f"site {reply.site_id}: {problem}")
                else:
                    well_formed.append((node, reply))
            verdicts = self.screen.screen(group, [r for _, r in well_formed], self.bound_for(members[0][1].bank))
            for (node, _), verdict in zip(well_formed, verdicts):
                if verdict.status == "rejected":
                    outcomes[node] = Outcome("rejected", verdict.reason)
                    continue
                if verdict.reason:
                    notes[node] = verdict.reason
                if verdict.counts:
                    counted.append((node, verdict.reply))
                else:
                    outcomes[node] = Outcome("accepted", None, replace(verdict.reply, weight=0.0), note=verdict.reason)
        counted.sort(key=lambda item: item[0])
        replies = [r for _, r in counted]
        replies, weight_notes = clip_weights(replies, self.weight_cap_factor,
                                             self.registry.max_weights() if self.registry else None)
        replies, share_notes = cap_shares(replies, self.max_share)
        replies, score_notes = bound_metrics(replies)
        for (node, _), reply in zip(counted, replies):
            outcomes[node] = Outcome("accepted", None, reply, note=notes.get(node))
        logged = [f"site {self._site_name(n)}: {note}" for n, note in sorted(notes.items())]
        return replies, logged + weight_notes + share_notes + score_notes

    def _groups(self, accepted: list[Reply]) -> dict[str, list[Reply]]:
        by_target: dict[str, list[Reply]] = {}
        for reply in accepted:
            for target in self._targets(reply):
                by_target.setdefault(target, []).append(reply)
        return by_target

    def _modality(self, site_id: str) -> str:
        return next((i.modality for i in self.sites.values() if i.site_id == site_id), "")

    def _site_name(self, node: int) -> str:
        return self.sites[node].site_id if node in self.sites else f"node-{node}"

    def bank_updates(self, accepted: list[Reply]) -> tuple[dict[str, dict], dict[str, tuple[str, int]]]:
        """Per target bank: the aggregated update (new state - current state) and what it is relative
        to ((bank, version) of the current state; a new modality bank starts from the bank its
        first sites trained from)."""
        by_target = self._groups(accepted)
        updates, bases = {}, {}
        for target, group in sorted(by_target.items()):
            latest = self.store.latest(target)
            base_bank, base_version = (target, latest.version) if latest else (group[0].bank, group[0].bank_version)
            base = self.store.get(base_bank, base_version).state
            rebased = [self.rebase(r, base) for r in group]
            new = aggregate(base, rebased, self.settings["adapter"].kind, self.settings["adapter"], self.rule,
                            self.trim_fraction)
            updates[target] = {k: (new[k].astype(np.float64) - base[k]).astype(np.float32) for k in self.schema}
            bases[target] = (base_bank, base_version)
        return updates, bases

    def rebase(self, reply: Reply, target_state: Mapping) -> Reply:
        """The reply's delta relative to `target_state` rather than to the bank it trained from:
        (its start + its delta) - target. Unchanged when it trained from that very state."""
        start = self.store.get(reply.bank, reply.bank_version).state
        if all(np.array_equal(start[k], target_state[k]) for k in self.schema):
            return reply
        delta = {k: (start[k].astype(np.float64) + reply.delta[k] - target_state[k]).astype(np.float32) for k in self.schema}
        return replace(reply, delta=delta)

    def aggregate_metrics(self, accepted: list[Reply], outcomes: Mapping[int, "Outcome"]) -> MetricRecord:
        from fedpoint.server.aggregate import weighted_metrics

        metrics = {k: float(v) for k, v in weighted_metrics(accepted).items() if math.isfinite(float(v))}
        count = {status: sum(o.status == status for o in outcomes.values()) for status in ("accepted", "rejected", "failed")}
        metrics |= {P.NUM_EXAMPLES: float(sum(float(r.weight) for r in accepted)),
                    **{f"replies-{status}": n for status, n in count.items()}}
        return MetricRecord(metrics)

    # ------------------------------------------------------------------------ commit
    def commit(self, server_round: int, updates: ArrayRecord | None, dp: Mapping | None = None) -> dict[str, int]:
        """Write each bank's new version (current + update) and the round's summary."""
        pending = self._pending if self._pending and self._pending["round"] == server_round else None
        accepted = pending["accepted"] if pending else []
        versions = {}
        fed_round = self.federation_round(server_round)
        writes = []
        for bank, update in _split_updates(updates).items():
            base_bank, base_version = pending["bases"][bank]
            base = self.store.get(base_bank, base_version).state
            state = {k: (base[k].astype(np.float64) + update[k]).astype(np.float32) for k in self.schema}
            group = [r for r in accepted if bank in self._targets(r)]
            rejected = [o for o in pending["outcomes"].values() if o.status == "rejected"] if bank == GENERAL else []
            fields = round_record(fed_round, group, rejected)
            fields["sources"] = sorted({f"{r.bank}@v{r.bank_version}" for r in group})
            fields["rule"], fields["trim_fraction"] = self.rule, self.trim_fraction
            norms = [delta_norm(r.delta) for r in group] + [
                delta_norm(self.rebase(r, base).delta) for r in group if self.store.latest(bank) is not None]
            fields["screen"] = {"max_norm": max(norms, default=0.0), "bound": self.bound_for(bank)
                                if self.store.latest(bank) else None}
            if self.clip_norm > 0:
                fields["clip_norm"] = self.clip_norm
            if dp:
                fields["dp"] = dict(dp)
            if self.store.latest(bank) is None:
                fields["created_from"] = f"{base_bank}@v{base_version}"
                writes.append(("init", bank, state, self.fingerprint, self.settings["adapter"].kind,
                               self.settings["adapter"], fields))
            else:
                writes.append(("write", bank, state, fields))
        entry = self._round_entry(server_round, pending, {}, dp)
        crash_point("before-commit", fed_round)
        # Journaled even when it wrote nothing: a restart resumes after the journal's last round.
        versions = self.store.commit_round(fed_round, writes, {"entry": entry.as_json(), "screen": self.screen.state()})
        crash_point("after-commit", fed_round)
        for bank, version in versions.items():
            log(INFO, "round %d: bank %s -> v%d", fed_round, bank, version)
        self.ledger.record(self._round_entry(server_round, pending, versions, dp))
        crash_point("after-ledger", fed_round)
        self._pending = None
        return versions

    # ------------------------------------------------------------------------ federated evaluation
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """After aggregation: each site of this round gets its bank's newest version (the one it
        will train from next) to score on its held-out cached cases."""
        if self.fraction_evaluate == 0.0:
            return []
        trained, self.evaluating = dict(self.sent), {}
        messages = []
        for node in sorted(n for n in trained if self.silent.get(n, 0) == 0):  # a node silent in training is not asked
            messages.append(self.instruct(node, server_round, config, MessageType.EVALUATE))
            self.evaluating[node] = self.sent[node]
        self.sent = trained  # `instruct` notes what it sends; the round's ledger keeps the train sends
        log(INFO, "round %d: asking %d site(s) to score the new bank versions", self.federation_round(server_round),
            len(messages))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Check each site's scores (`read_scores`: only scores and id fields, the bank and version it
        was sent, at most the cases it can hold), bound each version's scores by the other sites'
        (`bounded_scores`), then write the per-version summary beside the bank version and into
        federation.json."""
        fed_round = self.federation_round(server_round)
        per_site: dict[str, dict] = {}
        per_version: dict[tuple[str, int], dict[str, tuple[float, float]]] = {}
        answered = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            sent = self.evaluating.get(node)
            name = self._site_name(node)
            if msg.has_error():
                per_site[name] = {"status": "failed", "reason": error_text(msg.error)}
                continue
            try:
                cases, score = self.read_scores(msg, sent)
            except (EgressError, ValueError, TypeError) as err:
                per_site[name] = {"status": "refused", "reason": printable(str(err), 300)}
                log(WARNING, "round %d: evaluation reply of %s refused: %s", fed_round, printable(name), printable(str(err), 300))
                continue
            per_site[name] = {"status": "scored", "bank": sent.bank, "bank_version": sent.version, "eval-cases": cases,
                              **({"eval-dice-auc": score} if score is not None else {})}
            if cases > 0 and score is not None:
                per_version.setdefault((sent.bank, sent.version), {})[name] = (cases, score)
        self.note_silence(self.evaluating, answered)
        summary = {}
        for (bank, version), by_site in sorted(per_version.items()):
            bounded, notes = bounded_scores({n: d for n, (_, d) in by_site.items()})
            for note in notes:
                log(WARNING, "round %d: %s v%d: %s", fed_round, bank, version, printable(note, 300))
            total = sum(c for c, _ in by_site.values())
            entry = {"round": fed_round, "sites": len(by_site), "cases": int(total),
                     "dice_auc": round(sum(c * bounded[n] for n, (c, _) in by_site.items()) / total, 6),
                     "clicks": P.EVAL_CLICKS}
            summary[f"{bank}@v{version}"] = entry
            self.store.record_evaluation(bank, version, entry)
            log(INFO, "round %d: %s v%d scored by %d site(s) on %d held-out case(s): Dice-AUC %.3f", fed_round, bank,
                version, len(by_site), int(total), entry["dice_auc"])
        self.ledger.add_evaluation(fed_round, summary, per_site)
        crash_point("after-evaluate", fed_round)
        if not summary:
            return None
        cases = sum(e["cases"] for e in summary.values())
        return MetricRecord({"eval-cases": cases,
                             "eval-dice-auc": sum(e["cases"] * e["dice_auc"] for e in summary.values()) / cases})

    def read_scores(self, msg: Message, sent: Sent | None) -> tuple[int, float | None]:
        """(cases, Dice-AUC) of one evaluation reply, or EgressError/ValueError naming what is wrong:
        records besides scores and id fields, unknown or long fields, another bank version than the
        one sent, more cases than a site scores (`protocol.EVAL_MAX_CASES`, or its registry
        `max-weight`), or a score without cases."""
        from fedpoint.shared.payload import check_metrics

        extra = sorted(set(msg.content.keys()) - {P.METRICS, P.CONFIG})
        if extra or msg.content.array_records:
            raise EgressError(f"an evaluation reply carries scores and id fields only, not {printable(', '.join(extra) or 'arrays')}")
        if len(msg.content.metric_records) > 1 or len(msg.content.config_records) > 1:
            raise EgressError("an evaluation reply holds more than one record of a kind")
        metrics = dict(msg.content.metric_records.get(P.METRICS) or {})
        config = dict(msg.content.config_records.get(P.CONFIG) or {})
        unknown = sorted(set(metrics) - {"eval-cases", "eval-dice-auc"})
        if unknown:
            raise EgressError(f"an evaluation reply may hold eval-cases and eval-dice-auc only, not {printable(', '.join(unknown))}")
        check_metrics(metrics)
        P.check_reply_config(config)
        if sent is None or config.get(P.BANK) != sent.bank or config.get(P.BANK_VERSION) != sent.version:
            raise EgressError(f"scores for {printable(str(config.get(P.BANK)))}@v{printable(str(config.get(P.BANK_VERSION)))}, "
                              f"not the version sent ({sent.bank if sent else '?'}@v{sent.version if sent else '?'})")
        cases = metrics.get("eval-cases", 0)
        if float(cases) != int(cases):
            raise EgressError(f"eval-cases {cases!r} is not a whole number")
        cap = P.EVAL_MAX_CASES
        site = next((i.site_id for n, i in self.sites.items() if n == msg.metadata.src_node_id), None)
        registry_cap = (self.registry.max_weights() if self.registry else {}).get(site)
        if registry_cap:
            cap = min(cap, int(registry_cap))
        if int(cases) > cap:
            raise EgressError(f"eval-cases {int(cases)} is more than a site scores ({cap})")
        if "eval-dice-auc" in metrics and int(cases) == 0:
            raise EgressError("a score on 0 cases")
        return int(cases), float(metrics["eval-dice-auc"]) if "eval-dice-auc" in metrics else None

    def _targets(self, reply: Reply) -> list[str]:
        """The banks a reply updates: the general one, and its site's modality and task banks under "banks"."""
        info = next((i for i in self.sites.values() if i.site_id == reply.site_id), None)
        return banks_to_update(info.modality if info else "", self.bank_strategy, info.task if info else None)

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

    def _round_entry(self, server_round: int, pending: dict | None, versions: dict, dp: Mapping | None) -> RoundRecord:
        outcomes = pending["outcomes"] if pending else {}
        sites = {}
        for node, sent in self.sent.items():
            outcome = outcomes.get(node, Outcome("no reply" if pending else "skipped"))
            reply = outcome.reply
            sites[self._site_name(node)] = SiteRound(
                node=node, modality=self.sites[node].modality if node in self.sites else "",
                bank=sent.bank, bank_version=sent.version, bytes_down=sent.nbytes,
                bytes_up=payload_nbytes(reply.delta) if reply else 0, weight=float(reply.weight) if reply else 0.0,
                status=outcome.status, reason=outcome.reason, metrics=reply.metrics if reply else {},
                **_route_fields(self.sites.get(node), sent),
                **({"note": outcome.note} if outcome.note else {}),
            )
        for node, reason in self.dropped.items():
            sites[self._site_name(node)] = SiteRound(node=node, status="dropped", reason=reason)
        for node, reason in self.refused_nodes.items():
            sites.setdefault(f"node-{node}", SiteRound(node=node, status="refused", reason=reason))
        return RoundRecord(round=self.federation_round(server_round), time=round(time.time(), 3), sites=sites,
                           versions=versions, dp=dict(dp) if dp else None)


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
        pending = bank._pending if bank._pending and bank._pending["round"] == server_round else None
        out = {"delta": self.privacy.delta, "sampling_rate": self.num_sampled_clients / self.available,
               "accountant": "RDP (dp-accounting)"}
        shares = weight_shares(pending["accepted"], bank._targets) if released and pending else {}
        z = round_noise_multiplier(self.noise_stdv(), self.clipping_norm, shares)
        if math.isfinite(z):  # inf: no site's delta moved any bank (all weights 0), nothing to count
            self.privacy.check_next(out["sampling_rate"], z, bank.federation_round(server_round))
            out["effective_noise_multiplier"] = z
            self.privacy.record(out["sampling_rate"], z)
        out["epsilon"] = self.privacy.epsilon()
        return out


def weight_shares(accepted: list[Reply], targets) -> dict[str, list[float]]:
    """Per site, its weight share in each bank its reply fed (`targets(reply)` names them)."""
    totals: dict[str, float] = {}
    for r in accepted:
        for bank in targets(r):
            totals[bank] = totals.get(bank, 0.0) + float(r.weight)
    return {r.site_id: [float(r.weight) / totals[b] for b in targets(r) if totals[b] > 0] for r in accepted}


PRIVACY = ("none", "central-dp")  # the strategy variants, by name (CoordinatorConfig.privacy)


def build_strategy(privacy: str, store: BankStore, *, noise_multiplier: float = 0.0, clipping_norm: float = 1.0,
                   accountant: PrivacyAccountant | None = None, **settings) -> BankStrategy | PrivateBankStrategy:
    """The strategy Flower runs for a privacy variant; `settings` are BankStrategy's. Under central
    DP the noise scale starts from `min_train_nodes` sites (it follows the real sample each round),
    and `accountant` (if given) counts epsilon and stops at its budget.
    The bank strategy itself is the result under "none", its `.strategy` under "central-dp"."""
    if privacy == "none":
        return BankStrategy(store, **settings)
    if privacy == "central-dp":
        banks = NoisedBankStrategy(store, **settings)
        if accountant is not None and banks.rule != "weighted-mean":
            raise ValueError(f"the privacy accountant counts the weighted-mean rule, not {banks.rule!r}: "
                             "set aggregation-rule = \"weighted-mean\" under central DP")
        return PrivateBankStrategy(banks, noise_multiplier, clipping_norm, banks.min_train_nodes, accountant)
    raise ValueError(f"unknown privacy variant {privacy!r} (known: {', '.join(PRIVACY)})")


def bank_strategy_of(runner: BankStrategy | PrivateBankStrategy) -> BankStrategy:
    """The bank strategy a runner from `build_strategy` drives (the one that keeps the ledger)."""
    return runner if isinstance(runner, BankStrategy) else runner.strategy


# ------------------------------------------------------------------------------ helpers
def declared_task(value) -> str | None:
    """A site's declared task, normalised (None when it declares none); ValueError for a bad name."""
    from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

    if value is None:
        return None
    task = normalise_task(str(value)[:P.MAX_REPLY_STRING])
    return None if task == DEFAULT_TASK else task


def task_bank_or_none(task: str | None) -> str | None:
    """The bank of a declared task, None for the default task (whose sites are grouped by modality)."""
    try:
        return task_bank(task) if task else None
    except ValueError:
        return None


def _route_fields(info: SiteInfo | None, sent: Sent) -> dict:
    """The ledger's words on routing: the site's task (when it declared one) and why it got its bank."""
    return ({"task": info.task} if info is not None and info.task else {}) | ({"route": sent.route} if sent.route else {})


def _finite(delta: Mapping) -> bool:
    try:
        return all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in delta.values())
    except (TypeError, ValueError):
        return False


def error_text(error) -> str:
    """A site's error as the coordinator records it: the code and its fixed name only. The reason
    text is not kept (Flower would carry exception text there; fedpoint sites send a fixed one)."""
    code = int(getattr(error, "code", -1))
    return f"site error {code} ({P.SITE_ERROR_NAMES.get(code, 'not a fedpoint code')})"


def _split_updates(record: ArrayRecord | None) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in decode_arrays(record).items():
        bank, _, name = key.partition(BANK_SEPARATOR)
        out.setdefault(bank, {})[name] = array
    return out
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
        pending = bank._pending if bank._pending and bank._pending["round"] == server_round else None
        out = {"delta": self.privacy.delta, "sampling_rate": self.num_sampled_clients / self.available,
               "accountant": "RDP (dp-accounting)"}
        shares = weight_shares(pending["accepted"], bank._targets) if released and pending else {}
        z = round_noise_multiplier(self.noise_stdv(), self.clipping_norm, shares)
        if math.isfinite(z):  # inf: no site's delta moved any bank (all weights 0), nothing to count
            self.privacy.check_next(out["sampling_rate"], z, bank.federation_round(server_round))
            out["effective_noise_multiplier"] = z
            self.privacy.record(out["sampling_rate"], z)
        out["epsilon"] = self.privacy.epsilon()
        return out


def weight_shares(accepted: list[Reply], targets) -> dict[str, list[float]]:
    """Per site, its weight share in each bank its reply fed (`targets(reply)` names them)."""
    totals: dict[str, float] = {}
    for r in accepted:
        for bank in targets(r):
            totals[bank] = totals.get(bank, 0.0) + float(r.weight)
    return {r.site_id: [float(r.weight) / totals[b] for b in targets(r) if totals[b] > 0] for r in accepted}


PRIVACY = ("none", "central-dp")  # the strategy variants, by name (CoordinatorConfig.privacy)


def build_strategy(privacy: str, store: BankStore, *, noise_multiplier: float = 0.0, clipping_norm: float = 1.0,
                   accountant: PrivacyAccountant | None = None, **settings) -> BankStrategy | PrivateBankStrategy:
    """The strategy Flower runs for a privacy variant; `settings` are BankStrategy's. Under central
    DP the noise scale starts from `min_train_nodes` sites (it follows the real sample each round),
    and `accountant` (if given) counts epsilon and stops at its budget.
    The bank strategy itself is the result under "none", its `.strategy` under "central-dp"."""
    if privacy == "none":
        return BankStrategy(store, **settings)
    if privacy == "central-dp":
        banks = NoisedBankStrategy(store, **settings)
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
