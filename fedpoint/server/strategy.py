"""The coordinator's strategy: Flower's message-API FedAvg over adapter banks.

Each round:
1. `configure_train` samples sites as FedAvg does, asks sites it has not met yet who they are
   (a "query" message: site id and modality), and sends each the latest version of the bank that
   fits it (its modality bank, or the general bank), with a `RoundInstruction`.
2. `aggregate_train` turns replies into `Reply` objects, screens them (`screen_replies`: base
   fingerprint, names, shapes, dtypes, finite values, allowed metrics, norm outliers), optionally
   clips them, and aggregates them exactly (`aggregate`) into every bank they update: the general
   bank and, under "banks", their modality bank (created from the bank they trained from the first
   time a site of that modality replies). A rejected or failed reply is logged with its site id and
   the round goes on without it.
3. The new versions are written to the `BankStore`, which is also where a restarted coordinator
   resumes from (round numbers continue from the latest version's round).

What `aggregate_train` returns is the round's update of every bank (keys "<bank>/<param>"), so
that Flower's DP wrapper (`PrivateBankStrategy`) can add its noise before the banks are written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_stdv

from fedpoint.server.aggregate import aggregate, round_record
from fedpoint.server.banks import BankStore
from fedpoint.server.checks import Reply, clip_delta, screen_replies
from fedpoint.server.routing import GENERAL, bank_for_site, banks_to_update
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import payload_nbytes

BANK_SEPARATOR = "/"  # update keys are "<bank>/<parameter name>"; parameter names never hold "/"


@dataclass(frozen=True)
class SiteInfo:
    site_id: str
    modality: str


@dataclass(frozen=True)
class Outcome:
    """What became of one node's reply: accepted, rejected (with why), failed, no reply, skipped."""

    status: str
    reason: str | None = None
    reply: Reply | None = None


@dataclass(frozen=True)
class Sent:
    """What one node was sent this round."""

    bank: str
    version: int
    nbytes: int


class BankStrategy(FedAvg):
    """FedAvg whose "global model" is a set of adapter banks on disk."""

    def __init__(self, store: BankStore, *, fingerprint: str, schema: Mapping, settings: Mapping,
                 bank_strategy: str = "banks", norm_factor: float = 5.0, clip_norm: float = 0.0,
                 round_offset: int = 0, fraction_train: float = 1.0, min_train_nodes: int = 2,
                 query_timeout: float = 120.0, summary_path: str | Path | None = None):
        super().__init__(fraction_train=fraction_train, fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_evaluate_nodes=0, min_available_nodes=min_train_nodes)
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
        self.commit_updates = True  # False under the DP wrapper, which commits after adding noise
        self.sites: dict[int, SiteInfo] = {}
        self.sent: dict[int, Sent] = {}
        self.history: list[dict] = _read_history(self.summary_path)
        self._pending: dict | None = None

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
        sample_size = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        node_ids, all_nodes = sample_nodes(grid, self.min_available_nodes, sample_size)
        log(INFO, "configure_train: sampled %d sites (out of %d)", len(node_ids), len(all_nodes))
        self.identify(grid, node_ids)
        self.sent = {}
        return [self.instruct(node, server_round, config) for node in node_ids]

    def identify(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask sites not met yet for their id and modality (one small query message each)."""
        unknown = [n for n in node_ids if n not in self.sites]
        if not unknown:
            return
        queries = [Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                   for n in unknown]
        for reply in grid.send_and_receive(queries, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "site on node %d did not say who it is: %s", node, reply.error.reason)
                continue
            config = reply.content.config_records.get(P.CONFIG, {})
            self.sites[node] = SiteInfo(str(config.get(P.SITE_ID, f"node-{node}")), str(config.get(P.MODALITY, "")))
        for node in unknown:
            if node in self.sites:
                log(INFO, "site %s (%s) is node %d", self.sites[node].site_id, self.sites[node].modality, node)

    def bank_for(self, node_id: int) -> str:
        info = self.sites.get(node_id)
        return bank_for_site(info.modality if info else None, self.bank_strategy, self.store.banks())

    def instruct(self, node_id: int, server_round: int, config: Mapping | None = None) -> Message:
        """The train message for one node: its bank's latest version and the round instruction."""
        bank = self.bank_for(node_id)
        latest = self.store.latest(bank)
        instruction = P.RoundInstruction(server_round=self.federation_round(server_round), bank=bank,
                                         bank_version=latest.version, base_fingerprint=self.fingerprint, **self.settings)
        state = {name: latest.state[name] for name in self.schema}
        content = RecordDict({
            P.ARRAYS: ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in state.items()}),
            P.CONFIG: ConfigRecord({**dict(config or {}), **instruction.to_config()}),
        })
        self.sent[node_id] = Sent(bank, latest.version, payload_nbytes(state))
        return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)

    # ------------------------------------------------------------------------ aggregate
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        outcomes = {m.metadata.src_node_id: Outcome("failed", m.error.reason) for m in errors}
        parsed: dict[int, Reply] = {}
        for msg in valid:
            try:
                parsed[msg.metadata.src_node_id] = self.to_reply(msg)
            except (KeyError, TypeError, ValueError) as err:
                outcomes[msg.metadata.src_node_id] = Outcome("rejected", f"unreadable reply: {err}")
        node_of = {id(r): node for node, r in parsed.items()}
        accepted, screened_out = screen_replies(list(parsed.values()), self.schema, self.fingerprint, self.norm_factor)
        for r, reason in screened_out:
            outcomes[node_of[id(r)]] = Outcome("rejected", reason)
        if self.clip_norm > 0:
            clipped = [replace(r, delta=clip_delta(r.delta, self.clip_norm)[0]) for r in accepted]
            node_of |= {id(c): node_of[id(r)] for r, c in zip(accepted, clipped)}
            accepted = clipped
        for r in accepted:
            outcomes[node_of[id(r)]] = Outcome("accepted", None, r)
        for node, outcome in outcomes.items():
            if outcome.status == "rejected":
                log(WARNING, "round %d: rejected the reply of site %s: %s", self.federation_round(server_round),
                    self._site_name(node), outcome.reason)
        updates, bases = self.bank_updates(accepted)
        self._pending = {"round": server_round, "accepted": accepted, "bases": bases, "outcomes": outcomes}
        metrics = self.round_metrics(accepted, outcomes)
        if not updates:
            if self.commit_updates:
                self.commit(server_round, None)
            return None, metrics
        record = ArrayRecord(array_dict={f"{bank}{BANK_SEPARATOR}{name}": Array(np.ascontiguousarray(value, dtype=np.float32))
                                         for bank, update in updates.items() for name, value in update.items()})
        if self.commit_updates:
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
        claimed = str(config.get(P.SITE_ID, ""))
        if node not in self.sites:  # a site that did not answer the query but trained
            self.sites[node] = SiteInfo(claimed or f"node-{node}", str(config.get(P.MODALITY, "")))
        if claimed and claimed != self.sites[node].site_id:
            raise ValueError(f"reply claims to come from site {claimed!r}, but node {node} is site {self.sites[node].site_id!r}")
        return Reply(site_id=self.sites[node].site_id, bank=sent.bank, bank_version=sent.version,
                     delta={k: v.numpy() for k, v in arrays.items()}, weight=metrics.pop(P.NUM_EXAMPLES, 0),
                     fingerprint=str(config.get(P.BASE_FINGERPRINT, "")), metrics=metrics)

    def _site_name(self, node: int) -> str:
        return self.sites[node].site_id if node in self.sites else f"node-{node}"

    def bank_updates(self, accepted: list[Reply]) -> tuple[dict[str, dict], dict[str, tuple[str, int]]]:
        """Per target bank: the aggregated update (new state - current state) and what it is relative
        to ((bank, version) of the current state; a new modality bank starts from the bank its
        first sites trained from)."""
        by_target: dict[str, list[Reply]] = {}
        for reply in accepted:
            for target in self._targets(reply):
                by_target.setdefault(target, []).append(reply)
        updates, bases = {}, {}
        for target, group in sorted(by_target.items()):
            latest = self.store.latest(target)
            base_bank, base_version = (target, latest.version) if latest else (group[0].bank, group[0].bank_version)
            base = self.store.get(base_bank, base_version).state
            rebased = [self.rebase(r, base) for r in group]
            new = aggregate(base, rebased, self.settings["adapter"].kind, self.settings["adapter"])
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

    def round_metrics(self, accepted: list[Reply], outcomes: Mapping[int, "Outcome"]) -> MetricRecord:
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
        for bank, update in _split_updates(updates).items():
            base_bank, base_version = pending["bases"][bank]
            base = self.store.get(base_bank, base_version).state
            state = {k: (base[k].astype(np.float64) + update[k]).astype(np.float32) for k in self.schema}
            group = [r for r in accepted if bank in self._targets(r)]
            rejected = [o for o in pending["outcomes"].values() if o.status == "rejected"] if bank == GENERAL else []
            fields = round_record(fed_round, group, rejected)
            fields["sources"] = sorted({f"{r.bank}@v{r.bank_version}" for r in group})
            if self.clip_norm > 0:
                fields["clip_norm"] = self.clip_norm
            if dp:
                fields["dp"] = dict(dp)
            if self.store.latest(bank) is None:
                fields["created_from"] = f"{base_bank}@v{base_version}"
                versions[bank] = self.store.init_bank(bank, state, self.fingerprint, self.settings["adapter"].kind,
                                                      self.settings["adapter"], fields)
            else:
                versions[bank] = self.store.write(bank, state, fields)
            log(INFO, "round %d: bank %s -> v%d (%d sites)", fed_round, bank, versions[bank], len(group))
        self._record_round(server_round, pending, versions, dp)
        self._pending = None
        return versions

    def _targets(self, reply: Reply) -> list[str]:
        """The banks a reply updates: the general one, and its site's modality bank under "banks"."""
        modality = next((i.modality for i in self.sites.values() if i.site_id == reply.site_id), "")
        return banks_to_update(modality, self.bank_strategy)

    def _record_round(self, server_round: int, pending: dict | None, versions: dict, dp: Mapping | None) -> None:
        outcomes = pending["outcomes"] if pending else {}
        sites = {}
        for node, sent in self.sent.items():
            outcome = outcomes.get(node, Outcome("no reply" if pending else "skipped"))
            reply = outcome.reply
            sites[self._site_name(node)] = {
                "node": node, "modality": self.sites[node].modality if node in self.sites else "",
                "bank": sent.bank, "bank_version": sent.version, "bytes_down": sent.nbytes,
                "bytes_up": payload_nbytes(reply.delta) if reply else 0, "weight": float(reply.weight) if reply else 0.0,
                "status": outcome.status, "reason": outcome.reason, "metrics": reply.metrics if reply else {},
            }
        entry = {"round": self.federation_round(server_round), "time": round(time.time(), 3), "sites": sites,
                 "versions": versions, "dp": dict(dp) if dp else None}
        self.history.append(entry)
        _write_history(self.summary_path, self.history)


class PrivateBankStrategy(DifferentialPrivacyClientSideFixedClipping):
    """Flower's central DP with client-side fixed clipping around the bank strategy: sites clip
    their deltas (`fixedclipping_mod`), Flower adds Gaussian noise to each bank's aggregated update,
    and only then are the banks written. Flower skips a round in which any site failed."""

    def __init__(self, banks: BankStrategy, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int):
        super().__init__(banks, noise_multiplier, clipping_norm, num_sampled_clients)
        banks.commit_updates = False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.num_sampled_clients = max(len(messages), 1)  # the noise scale divides by the real sample
        return messages

    def noise_stdv(self) -> float:
        return compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, metrics = super().aggregate_train(server_round, replies)
        dp = {"noise_multiplier": self.noise_multiplier, "clipping_norm": self.clipping_norm,
              "sampled_sites": self.num_sampled_clients, "noise_stdv": self.noise_stdv(), "mechanism": "client-side fixed clipping"}
        self.strategy.commit(server_round, updates, dp)
        if metrics is not None:
            metrics["dp-noise-multiplier"] = float(self.noise_multiplier)
            metrics["dp-noise-stdv"] = float(dp["noise_stdv"])
        return updates, metrics


# ------------------------------------------------------------------------------ helpers
def _split_updates(record: ArrayRecord | None) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, array in (record or {}).items():
        bank, _, name = key.partition(BANK_SEPARATOR)
        out.setdefault(bank, {})[name] = array.numpy()
    return out


def _read_history(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return list(json.loads(path.read_text()).get("rounds", []))


def _write_history(path: Path | None, history: list[dict]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump({"rounds": history}, handle, indent=1, default=float)
    os.replace(tmp, path)
