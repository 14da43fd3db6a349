"""A coordinator round after intake, as functions over typed records: screens, rebase, aggregate, commit plan.

    replies (node -> Reply) --clip_replies--> --screen_round--> accepted replies, each node's Outcome
        --plan_updates--> a BankUpdate per target bank (base version, rebased replies, update)
        --version_writes--> the versions `BankStore.commit_round` writes (base + update, after any DP noise)
        --round_entry--> the round's ledger record

Free of Flower messages: the strategy (`fedpoint.server.strategy`) reads the messages
(`fedpoint.server.intake`), calls these, and writes. Bank versions are read through the round's
`RoundReads` (each read and verified once); a reply's norm is measured once (`Reply.norm`) and its
rebased delta computed once per target bank, then carried to the commit on the `BankUpdate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from fedpoint.server.aggregate import aggregate, round_record, weighted_metrics
from fedpoint.server.bank_reads import RoundReads
from fedpoint.server.checks import (HISTORY_VERSIONS, PeerScreen, bound_metrics, bounded_scores, cap_shares, clip_delta,
                                    clip_weights, norm_bound, structural_problem)
from fedpoint.server.ledger import RoundRecord, SiteRound
from fedpoint.server.policy import CoordinatorPolicy
from fedpoint.server.records import BankUpdate, Outcome, Reply, RoundPlan, Sent, SiteInfo
from fedpoint.server.routing import GENERAL, banks_to_update, modality_bank, task_bank
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import Schema, adapter_arrays_problem, payload_nbytes
from fedpoint.shared.tasks import DEFAULT_TASK


# ------------------------------------------------------------------------ who is whom
def site_of(site_id: str, sites: Mapping[int, SiteInfo]) -> SiteInfo | None:
    """The identity of a site id (the first node that holds it), None when none does."""
    return next((i for i in sites.values() if i.site_id == site_id), None)


def targets(reply: Reply, sites: Mapping[int, SiteInfo], routing: str) -> list[str]:
    """The banks a reply updates: the general one, and under "banks" its site's modality bank and
    the bank of the task the reply was sent and trained (`Reply.task`), never another task's."""
    info = site_of(reply.site_id, sites)
    return banks_to_update(info.modality if info else "", routing, reply.task)


def peer_group(reply: Reply, sites: Mapping[int, SiteInfo]) -> str:
    """Whom a reply is compared with: the replies of its task (named by their task bank), else of
    its modality (named by their modality bank). Within a round they all trained from the same bank,
    and a lone modality is never judged against another one's majority. The group keeps its name when
    its sites move from the general bank to their own, so its memory carries on."""
    if task_bank_or_none(reply.task):
        return task_bank_or_none(reply.task)
    info = site_of(reply.site_id, sites)
    modality = info.modality if info else ""
    return modality_bank(modality) if modality else reply.bank


def task_bank_or_none(task: str | None) -> str | None:
    """The bank of a declared task, None for the default task (whose sites are grouped by modality)."""
    try:
        return task_bank(task) if task else None
    except ValueError:
        return None


def bank_bound(reads: RoundReads, bank: str, schema: Schema, policy: CoordinatorPolicy) -> float:
    """The absolute L2 bound on a delta into `bank`: the kind's cap, tightened by the bank's history."""
    n_values = int(sum(int(np.prod(shape)) for shape, _ in schema.values()))
    history = reads.recent_max_norms(bank, HISTORY_VERSIONS)
    return norm_bound(policy.adapter.kind, n_values, history, policy.history_factor, policy.norm_cap_rms)


# ------------------------------------------------------------------------ screens
def clip_replies(replies: Mapping[int, Reply], clip_norm: float, schema: Schema) -> dict[int, Reply]:
    """Each well-formed delta clipped to `clip_norm` (global L2) before the size screens; a
    malformed one is left for the screens to reject. `clip_norm` 0: unchanged."""
    if clip_norm <= 0:
        return dict(replies)
    return {n: replace(r, delta=clip_delta(r.delta, clip_norm, r.norm)[0])
            if adapter_arrays_problem(r.delta, schema) is None else r for n, r in replies.items()}


def screen_round(replies: Mapping[int, Reply], outcomes: dict[int, Outcome], *, sites: Mapping[int, SiteInfo],
                 screen: PeerScreen, bound: Callable[[str], float], schema: Schema, fingerprint: str,
                 policy: CoordinatorPolicy, weight_caps: Mapping[str, float] | None = None) -> tuple[list[Reply], list[str]]:
    """The screens on one round's readable replies: structure, then each peer group's size and
    direction screens (`PeerScreen`), then weights (clipped, shares capped) and the reported
    scores (bounded by the others'). Fills `outcomes`; returns the replies to aggregate, in node
    order, and notes to log. `bound(bank)`: the absolute bound on a delta into a bank."""
    groups: dict[str, list[tuple[int, Reply]]] = {}
    for node, reply in sorted(replies.items()):
        groups.setdefault(peer_group(reply, sites), []).append((node, reply))
    counted: list[tuple[int, Reply]] = []
    notes: dict[int, str] = {}
    for group, members in sorted(groups.items()):
        well_formed = []
        for node, reply in members:
            problem = structural_problem(reply, schema, fingerprint)
            if problem:
                outcomes[node] = Outcome("rejected", f"site {reply.site_id}: {problem}")
            else:
                well_formed.append((node, reply))
        verdicts = screen.screen(group, [r for _, r in well_formed], bound(members[0][1].bank))
        counted += _sort_verdicts(well_formed, verdicts, outcomes, notes)
    counted.sort(key=lambda item: item[0])
    accepted, weight_notes = clip_weights([r for _, r in counted], policy.weight_cap_factor, weight_caps)
    accepted, share_notes = cap_shares(accepted, policy.max_share)
    accepted, score_notes = bound_metrics(accepted)
    for (node, _), reply in zip(counted, accepted):
        outcomes[node] = Outcome("accepted", None, reply, note=notes.get(node))
    logged = [f"site {_name(n, sites)}: {note}" for n, note in sorted(notes.items())]
    return accepted, logged + weight_notes + share_notes + score_notes


def _sort_verdicts(well_formed: list[tuple[int, Reply]], verdicts, outcomes: dict[int, Outcome],
                   notes: dict[int, str]) -> list[tuple[int, Reply]]:
    """A peer group's verdicts into outcomes (rejected; accepted without weight) and notes; the
    (node, reply) pairs that count in the banks' means."""
    counted = []
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
    return counted


# ------------------------------------------------------------------------ rebase and aggregate
def rebase(reply: Reply, start: Mapping, target: Mapping, schema: Schema) -> Reply:
    """The reply's delta relative to `target` rather than to `start` (the state it trained from):
    (start + delta) - target. The reply itself when both states are equal."""
    if all(np.array_equal(start[k], target[k]) for k in schema):
        return reply
    delta = {k: (start[k].astype(np.float64) + reply.delta[k] - target[k]).astype(np.float32) for k in schema}
    return replace(reply, delta=delta)


def plan_updates(accepted: list[Reply], reads: RoundReads, *, sites: Mapping[int, SiteInfo], schema: Schema,
                 policy: CoordinatorPolicy) -> dict[str, BankUpdate]:
    """Per target bank: the accepted replies that feed it, rebased onto its base (its latest version;
    a new bank starts from the bank its first sites trained from), and the aggregated update."""
    by_target: dict[str, list[Reply]] = {}
    for reply in accepted:
        for target in targets(reply, sites, policy.routing):
            by_target.setdefault(target, []).append(reply)
    out = {}
    for target, group in sorted(by_target.items()):
        latest = reads.latest(target)
        base = (target, latest.version) if latest else (group[0].bank, group[0].bank_version)
        base_state = reads.get(*base).state
        rebased = [r if r.source == base else rebase(r, reads.get(*r.source).state, base_state, schema) for r in group]
        new = aggregate(base_state, rebased, policy.adapter.kind, policy.adapter, policy.aggregation_rule,
                        policy.trim_fraction)
        update = {k: (new[k].astype(np.float64) - base_state[k]).astype(np.float32) for k in schema}
        out[target] = BankUpdate(target, base, base_state, group, rebased, update, exists=latest is not None)
    return out


def weight_shares(accepted: list[Reply], targets_of: Callable[[Reply], list[str]]) -> dict[str, list[float]]:
    """Per site, its weight share in each bank its reply fed (`targets_of(reply)` names them)."""
    totals: dict[str, float] = {}
    for r in accepted:
        for bank in targets_of(r):
            totals[bank] = totals.get(bank, 0.0) + float(r.weight)
    return {r.site_id: [float(r.weight) / totals[b] for b in targets_of(r) if totals[b] > 0] for r in accepted}


def round_metrics(accepted: list[Reply], outcomes: Mapping[int, Outcome]) -> dict[str, float]:
    """The round's metrics for Flower: weighted means of the accepted replies' metrics, the cases
    they trained on and how many replies were accepted, rejected and failed."""
    metrics = {k: float(v) for k, v in weighted_metrics(accepted).items() if math.isfinite(float(v))}
    count = {status: sum(o.status == status for o in outcomes.values()) for status in ("accepted", "rejected", "failed")}
    return metrics | {P.NUM_EXAMPLES: float(sum(float(r.weight) for r in accepted)),
                      **{f"replies-{status}": n for status, n in count.items()}}


# ------------------------------------------------------------------------ commit
def version_writes(plan: RoundPlan, updates: Mapping[str, Mapping[str, np.ndarray]], reads: RoundReads, *,
                   fed_round: int, schema: Schema, fingerprint: str, policy: CoordinatorPolicy,
                   bound: Callable[[str], float], dp: Mapping | None = None) -> list[tuple]:
    """What `BankStore.commit_round` writes: each bank's base + its update (as released: after
    Flower's DP noise when it runs), with the round's provenance in the manifest."""
    writes = []
    for bank, update in updates.items():
        planned = plan.updates[bank]
        state = {k: (planned.base_state[k].astype(np.float64) + update[k]).astype(np.float32) for k in schema}
        fields = _manifest_fields(plan, planned, fed_round, policy, bound, dp)
        if planned.exists:
            writes.append(("write", bank, state, fields, reads.latest(bank)))
        else:
            fields["created_from"] = f"{planned.base[0]}@v{planned.base[1]}"
            writes.append(("init", bank, state, fingerprint, policy.adapter.kind, policy.adapter, fields))
    return writes


def _manifest_fields(plan: RoundPlan, planned: BankUpdate, fed_round: int, policy: CoordinatorPolicy,
                     bound: Callable[[str], float], dp: Mapping | None) -> dict:
    group = planned.replies
    rejected = [o for o in plan.outcomes.values() if o.status == "rejected"] if planned.bank == GENERAL else []
    fields = round_record(fed_round, group, rejected)
    fields["sources"] = sorted({f"{r.bank}@v{r.bank_version}" for r in group})
    fields["rule"], fields["trim_fraction"] = policy.aggregation_rule, policy.trim_fraction
    norms = [r.norm for r in group] + ([r.norm for r in planned.rebased] if planned.exists else [])
    fields["screen"] = {"max_norm": max(norms, default=0.0), "bound": bound(planned.bank) if planned.exists else None}
    if policy.clip_norm > 0:
        fields["clip_norm"] = policy.clip_norm
    if dp:
        fields["dp"] = dict(dp)
    return fields


def evaluation_summary(fed_round: int, per_version: Mapping[tuple[str, int], Mapping[str, tuple[int, float]]]):
    """Per scored bank version ("bank@vN"), the cases-weighted mean Dice-AUC of the sites' scores,
    each bounded by the other sites' (`bounded_scores`); and notes naming each bounded score."""
    summary, notes = {}, []
    for (bank, version), by_site in sorted(per_version.items()):
        bounded, bounded_notes = bounded_scores({n: d for n, (_, d) in by_site.items()})
        notes += [f"{bank} v{version}: {note}" for note in bounded_notes]
        total = sum(c for c, _ in by_site.values())
        summary[f"{bank}@v{version}"] = {
            "round": fed_round, "sites": len(by_site), "cases": int(total),
            "dice_auc": round(sum(c * bounded[n] for n, (c, _) in by_site.items()) / total, 6), "clicks": P.EVAL_CLICKS}
    return summary, notes


def round_entry(fed_round: int, *, sent: Mapping[int, Sent], plan: RoundPlan | None, sites: Mapping[int, SiteInfo],
                dropped: Mapping[int, str], refused: Mapping[int, str], versions: Mapping[str, int],
                dp: Mapping | None) -> RoundRecord:
    """The round's ledger record: each node sent a bank and what became of it (no plan: the round
    was skipped), the nodes left out for their silence or refused, the versions written."""
    outcomes = plan.outcomes if plan else {}
    rows = {}
    for node, what in sent.items():
        outcome = outcomes.get(node, Outcome("no reply" if plan else "skipped"))
        reply = outcome.reply
        info = sites.get(node)
        rows[_name(node, sites)] = SiteRound(
            node=node, modality=info.modality if info else "",
            bank=what.bank, bank_version=what.version, bytes_down=what.nbytes,
            bytes_up=payload_nbytes(reply.delta) if reply else 0, weight=float(reply.weight) if reply else 0.0,
            status=outcome.status, reason=outcome.reason, metrics=reply.metrics if reply else {},
            **_task_fields(what, info),
            **({"route": what.route} if what.route else {}),
            **({"note": outcome.note} if outcome.note else {}),
        )
    for node, reason in dropped.items():
        rows[_name(node, sites)] = SiteRound(node=node, status="dropped", reason=reason)
    for node, reason in refused.items():
        rows.setdefault(f"node-{node}", SiteRound(node=node, status="refused", reason=reason))
    return RoundRecord(round=fed_round, time=round(time.time(), 3), sites=rows, versions=dict(versions),
                       dp=dict(dp) if dp else None)


def _task_fields(sent: Sent, info: SiteInfo | None) -> dict:
    """The ledger's task fields of a node's row: the task it was sent (named when not the default,
    or when it has several), and for a site of several, every task it declares."""
    several = info is not None and len(info.tasks) > 1
    fields = {"task": sent.task or DEFAULT_TASK} if sent.task or several else {}
    return fields | ({"tasks": [t or DEFAULT_TASK for t in info.tasks]} if several else {})


def _name(node: int, sites: Mapping[int, SiteInfo]) -> str:
    return sites[node].site_id if node in sites else f"node-{node}"
