"""The coordinator's intake: a site's Flower message read into a typed record, or refused with why.

Three kinds of answer arrive: who a node is (the identity query: `read_identity`), a trained
reply (`read_reply`, a `Reply` relative to the bank version the node was sent), and a federated
evaluation's scores (`read_scores`). Each is checked against what the protocol allows
(`fedpoint.shared.protocol`, `fedpoint.shared.payload`) and against what the coordinator knows of
the node (its identity, what it was sent). Whether a reply's arrays are the adapter's parameters,
on the same base, is the screens' first question (`fedpoint.server.checks.structural_problem`),
asked once per reply. Functions of their inputs only: the strategy hands them what it knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Message

from fedpoint.server.records import Outcome, Reply, Sent, SiteInfo
from fedpoint.server.registry import SiteRegistry
from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError, check_metrics, decode_arrays
from fedpoint.shared.protocol import printable


def declared_task(value) -> str | None:
    """A site's declared task, normalised (None when it declares none); ValueError for a bad name."""
    from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

    if value is None:
        return None
    task = normalise_task(str(value)[:P.MAX_REPLY_STRING])
    return None if task == DEFAULT_TASK else task


def declared_tasks(task, tasks) -> tuple[str | None, ...]:
    """Every task a site declares, its primary first (normalised; None: the default task): `tasks`
    (a list of names, at most `tasks.MAX_TASKS`) with `task`, when given, as the primary; ValueError
    for a bad list or name."""
    from fedpoint.shared.tasks import MAX_TASKS

    if tasks is None:
        return (declared_task(task),)
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_TASKS or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{P.TASKS!r} must be a list of 1 to {MAX_TASKS} structure names")
    named = [declared_task(t) for t in tasks]
    primary = declared_task(task) if task is not None else named[0]
    return tuple(dict.fromkeys([primary, *named]))


def error_text(error) -> str:
    """A site's error as the coordinator records it: the code and its fixed name only. The reason
    text is not kept (Flower would carry exception text there; fedpoint sites send a fixed one)."""
    code = int(getattr(error, "code", -1))
    return f"site error {code} ({P.SITE_ERROR_NAMES.get(code, 'not a fedpoint code')})"


def read_identity(node: int, msg: Message, sites: Mapping[int, SiteInfo], registry: SiteRegistry | None) -> SiteInfo:
    """The site a node is: its claims validated, then bound by the registry (deployment) or,
    without one, to the first node that claims that id (simulation: the partition plays the node).
    ValueError says why an identity is refused."""
    from fedpoint.server.routing import modality_bank

    unknown = sorted(set(msg.content.keys()) - {P.CONFIG})
    if unknown:
        raise ValueError(f"the answer holds records {printable(', '.join(unknown))} besides {P.CONFIG!r}")
    config = msg.content.config_records.get(P.CONFIG, {})
    extra = sorted(set(config) - {P.SITE_ID, P.MODALITY, P.TASK, P.TASKS})
    if extra:
        raise ValueError(f"the answer holds fields {printable(', '.join(extra))} besides site id, modality and tasks")
    site_id = P.check_site_id(config.get(P.SITE_ID))
    modality = P.check_modality(config.get(P.MODALITY))
    tasks = declared_tasks(config.get(P.TASK), config.get(P.TASKS))
    modality_bank(modality)  # a modality that gives no bank name is refused here, not mid-round
    if registry is not None:
        entry = registry.resolve(node, site_id, modality)
        return SiteInfo(entry.site_id, entry.modality if entry.modality is not None else modality, tasks=tasks)
    holder = next((n for n, i in sites.items() if i.site_id == site_id and n != node), None)
    if holder is not None:
        raise ValueError(f"node {node} claims site {site_id!r}, which is node {holder}")
    return SiteInfo(site_id, modality, tasks=tasks)


def read_replies(messages: Iterable[Message], sent: Mapping[int, Sent],
                 sites: Mapping[int, SiteInfo]) -> tuple[dict[int, Reply], dict[int, Outcome]]:
    """A round's trained replies from the nodes asked this round (others are ignored): node ->
    `Reply` for the readable ones, and the outcome of the others (failed: the site's error code;
    rejected: unreadable, with why)."""
    asked = [m for m in messages if m.metadata.src_node_id in sent]
    outcomes = {m.metadata.src_node_id: Outcome("failed", error_text(m.error)) for m in asked if m.has_error()}
    parsed: dict[int, Reply] = {}
    for msg in (m for m in asked if not m.has_error()):
        node = msg.metadata.src_node_id
        try:
            parsed[node] = read_reply(msg, sent.get(node), sites.get(node))
        except (KeyError, TypeError, ValueError, EgressError) as err:
            outcomes[node] = Outcome("rejected", f"unreadable reply: {printable(str(err), 300)}")
    return parsed, outcomes


def read_reply(msg: Message, sent: Sent | None, site: SiteInfo | None) -> Reply:
    """A trained reply as a `Reply` (relative to the version `sent`), or ValueError/EgressError
    naming what is wrong: records or fields besides the protocol's, more than one record of a kind,
    a node that was not asked or has no identity, claims that differ from its identity or from
    what it was sent."""
    node = msg.metadata.src_node_id
    if sent is None:
        raise ValueError(f"node {node} was not asked to train this round")
    config = msg.content.config_records.get(P.CONFIG, {})
    metrics = dict(msg.content.metric_records.get(P.METRICS, {}))
    arrays = msg.content.array_records.get(P.ARRAYS)
    _check_reply_records(msg, arrays, config)
    if site is None:
        raise ValueError(f"node {node} has no identity (it did not answer the identity query)")
    _check_claims(node, config, site, sent)
    return Reply(site_id=site.site_id, bank=sent.bank, bank_version=sent.version,
                 delta=decode_arrays(arrays), weight=metrics.pop(P.NUM_EXAMPLES, 0),
                 fingerprint=str(config.get(P.BASE_FINGERPRINT, "")), metrics=metrics, task=sent.task)


def _check_reply_records(msg: Message, arrays, config: Mapping) -> None:
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


def _check_claims(node: int, config: Mapping, site: SiteInfo, sent: Sent) -> None:
    """The reply's id fields must be the node's identity and what it was sent."""
    claimed = config.get(P.SITE_ID, "")
    if claimed and claimed != site.site_id:
        raise ValueError(f"reply claims to come from site {claimed!r}, but node {node} is site {site.site_id!r}")
    modality = config.get(P.MODALITY, "")
    if modality and modality != site.modality:
        raise ValueError(f"reply claims modality {modality!r}, but site {site.site_id!r} is {site.modality!r}")
    if P.TASKS in config:
        raise ValueError(f"a reply claims one task ({P.TASK!r}); {P.TASKS!r} belongs to the identity")
    task = declared_task(config.get(P.TASK))
    if task != sent.task:
        declared = ", ".join(repr(t) for t in site.tasks)
        raise ValueError(f"reply claims task {task!r}, but site {site.site_id!r} was sent task {sent.task!r} this "
                         f"round (declared: {declared})")
    for key, expected in ((P.BANK, sent.bank), (P.BANK_VERSION, sent.version)):
        if key in config and config[key] != expected:
            raise ValueError(f"reply says it trained from {key} {config[key]!r}, but {expected!r} was sent")


def read_scores(msg: Message, sent: Sent | None, max_cases: int = P.EVAL_MAX_CASES) -> tuple[int, float | None]:
    """(cases, Dice-AUC) of one evaluation reply, or EgressError/ValueError naming what is wrong:
    records besides scores and id fields, unknown or long fields, another bank version than the
    one sent, more cases than a site scores (`max_cases`: `protocol.EVAL_MAX_CASES`, or lower by
    the site's registry `max-weight`), or a score without cases."""
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
    if int(cases) > max_cases:
        raise EgressError(f"eval-cases {int(cases)} is more than a site scores ({max_cases})")
    if "eval-dice-auc" in metrics and int(cases) == 0:
        raise EgressError("a score on 0 cases")
    return int(cases), float(metrics["eval-dice-auc"]) if "eval-dice-auc" in metrics else None


def eval_case_cap(site_id: str | None, registry: SiteRegistry | None) -> int:
    """The most held-out cases a site may claim: the protocol's cap, lowered by its registry max-weight."""
    cap = P.EVAL_MAX_CASES
    registry_cap = (registry.max_weights() if registry else {}).get(site_id)
    return min(cap, int(registry_cap)) if registry_cap else cap


def read_evaluations(messages: Iterable[Message], evaluating: Mapping[int, Sent], sites: Mapping[int, SiteInfo],
                     registry: SiteRegistry | None = None):
    """A federated evaluation round's answers: per site name, what became of its scores (scored,
    failed, refused with why); per (bank, version), each site's (cases, score); the nodes that answered."""
    per_site: dict[str, dict] = {}
    per_version: dict[tuple[str, int], dict[str, tuple[int, float]]] = {}
    answered = set()
    for msg in messages:
        node = msg.metadata.src_node_id
        answered.add(node)
        sent, site = evaluating.get(node), sites.get(node)
        name = site.site_id if site else f"node-{node}"
        if msg.has_error():
            per_site[name] = {"status": "failed", "reason": error_text(msg.error)}
            continue
        try:
            cases, score = read_scores(msg, sent, eval_case_cap(site.site_id if site else None, registry))
        except (EgressError, ValueError, TypeError) as err:
            per_site[name] = {"status": "refused", "reason": printable(str(err), 300)}
            continue
        per_site[name] = {"status": "scored", "bank": sent.bank, "bank_version": sent.version, "eval-cases": cases,
                          **({"eval-dice-auc": score} if score is not None else {})}
        if cases > 0 and score is not None:
            per_version.setdefault((sent.bank, sent.version), {})[name] = (cases, score)
    return per_site, per_version, answered
