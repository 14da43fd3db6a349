"""Which adapter bank a site receives and which banks its reply updates.

One site-general bank learns from every site; one bank per modality learns only from sites of that
modality; one bank per task (the structure a site declares it labels, normalised by
`fedpoint.shared.tasks`: "Lung field" and "lung-field" are one task) learns only from sites of that
task. Routing "banks" sends a site the most specific of its banks that exists: its task bank, else
its modality bank, else the general one (`route` says which and why); routing "general" is plain
federated averaging of one shared adapter. A task bank is never updated by another task's reply.
(The run-config key is `bank-routing`; its old name `bank-strategy` is still accepted.)

A site that labels several structures declares several tasks; it still gets one message a round,
for one of its tasks, taken in turn by its own round count (`task_in_turn`), and its reply updates
that task's banks only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

GENERAL = "general"
MODALITY_PREFIX = "modality-"
TASK_PREFIX = "task-"
ROUTINGS = ("general", "banks")

_SAFE_BANK = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


_PLAIN_MODALITY = re.compile(r"^[A-Za-z0-9 _.+/-]+$")
MAX_PLAIN_SLUG = 40
HASH_CHARS = 10


def modality_bank(modality: str) -> str:
    """The bank name for a modality, always a safe folder name of at most 63 characters.

    A plain ASCII modality keeps its readable slug ("CT" -> "modality-ct", "MR T1" ->
    "modality-mr-t1"), as before. Any other valid modality (another script, such as "МРТ" or
    "超音波", or a long name) gets a stable slug: its ASCII-folded letters (at most 40) and the
    first 10 hex digits of the sha256 of its NFC case-folded form, e.g. "modality-u-3f1c...".
    Invalid modalities (fedpoint.shared.protocol.check_modality) raise ValueError.
    """
    from fedpoint.shared.protocol import check_modality

    name = check_modality(modality)
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    if _PLAIN_MODALITY.match(name) and slug and len(slug) <= MAX_PLAIN_SLUG:
        return check_bank_name(MODALITY_PREFIX + slug)
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    folded = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:MAX_PLAIN_SLUG].strip("-") or "u"
    digest = hashlib.sha256(name.strip().casefold().encode("utf-8")).hexdigest()[:HASH_CHARS]
    return check_bank_name(f"{MODALITY_PREFIX}{folded}-{digest}")


def check_bank_name(bank: str) -> str:
    """Bank names become folder names: lowercase letters, digits and dashes only."""
    if not isinstance(bank, str) or not _SAFE_BANK.match(bank):
        raise ValueError(f"bad bank name {bank!r}: use lowercase letters, digits and dashes (e.g. 'general', 'modality-ct')")
    return bank


def _check_routing(routing: str) -> str:
    if routing not in ROUTINGS:
        raise ValueError(f"unknown bank routing {routing!r}; known: {', '.join(ROUTINGS)}")
    return routing


def task_bank(task: str) -> str:
    """The bank of a task: "task-" and the normalised structure name ("Lesion core" -> "task-lesion-core")."""
    from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

    name = normalise_task(task)
    if name == DEFAULT_TASK:
        raise ValueError("the default task has no task bank: it is the site's modality and general banks")
    return check_bank_name(TASK_PREFIX + name.replace(".", "-"))


def _task_of(task: str | None) -> str | None:
    from fedpoint.shared.tasks import DEFAULT_TASK, normalise_task

    name = normalise_task(task)
    return None if name == DEFAULT_TASK else name


def route(modality: str | None, routing: str, existing_banks: Iterable[str], task: str | None = None) -> tuple[str, str]:
    """(the bank a site of this modality and task receives this round, why: words for the ledger)."""
    if _check_routing(routing) == "general":
        return GENERAL, "routing general: one bank for every site"
    existing = set(existing_banks)
    own_task = _task_of(task)
    if own_task is not None:
        bank = task_bank(own_task)
        if bank in existing:
            return bank, f"task bank of {own_task!r}"
    if modality:
        bank = modality_bank(modality)
        if bank in existing:
            why = f"no bank of task {own_task!r} yet" if own_task else "no task declared"
            return bank, f"modality bank of {modality!r} ({why})"
    missing = [f"task {own_task!r}"] * bool(own_task) + [f"modality {modality!r}"] * bool(modality)
    return GENERAL, "general bank" + (f" (no bank of {' or '.join(missing)} yet)" if missing else " (no modality declared)")


def bank_for_site(modality: str | None, routing: str, existing_banks: Iterable[str], task: str | None = None) -> str:
    """The bank whose adapter a site of this modality (and task) receives this round."""
    return route(modality, routing, existing_banks, task)[0]


def banks_to_update(modality: str | None, routing: str, task: str | None = None) -> list[str]:
    """The banks a site's reply is aggregated into: always the general bank, plus, under routing
    "banks", its modality bank and its own task's bank (never another task's)."""
    if _check_routing(routing) == "general":
        return [GENERAL]
    banks = [GENERAL]
    if modality:
        banks.append(modality_bank(modality))
    own_task = _task_of(task)
    if own_task is not None:
        banks.append(task_bank(own_task))
    return banks


def task_in_turn(tasks: Sequence[str | None], rounds_sent: int) -> tuple[str | None, str]:
    """(the task a site works on this round, why: words for the ledger, "" for a site of one task).
    A site of several tasks takes them in turn, by the number of rounds it was sent work before
    (`rounds_sent`, which the ledger keeps), so a restarted coordinator continues the turn."""
    if not tasks:
        raise ValueError("a site declares at least one task")
    if len(tasks) == 1:
        return tasks[0], ""
    index = rounds_sent % len(tasks)
    names = ", ".join(t or "default" for t in tasks)
    return tasks[index], f"task {tasks[index] or 'default'!r} in turn ({index + 1} of {len(tasks)}: {names})"
