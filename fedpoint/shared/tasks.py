"""Tasks: the structure a site labels ("liver", "lesion core"), named once for sites and coordinator.

A site keeps one adapter per task, and the federation one bank per task. A task's name is the
structure name as the site declares it, normalised so that "Lung field", "lung_field" and
"lung-field" are one task: lowercase, every run of spaces, underscores and dashes one dash.
The default task (`DEFAULT_TASK`) is the site's adapter from before tasks existed.

Standard library only: the CLI and the coordinator import it without torch.
"""

from __future__ import annotations

import re

DEFAULT_TASK = "default"
MAX_TASK = 48
_SEPARATORS = re.compile(r"[ _-]+")
_RAW = re.compile(r"^[A-Za-z0-9 ._-]+$")
_TASK = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def normalise_task(name: str | None) -> str:
    """The one form of a structure name ("Lung  Field" -> "lung-field"); None or "" -> the default
    task. ValueError for a name that is not letters, digits, '.', spaces, '_' or '-'."""
    if name is None or not str(name).strip():
        return DEFAULT_TASK
    if not isinstance(name, str):
        raise ValueError(f"task name must be text, got {type(name).__name__}")
    slug = _SEPARATORS.sub("-", name.strip().lower()).strip("-")
    if not _RAW.match(name.strip()) or not _TASK.match(slug) or ".." in slug or len(slug) > MAX_TASK:
        raise ValueError(f"invalid task (structure) name {name!r}: use letters, digits, '.', spaces, '_' or '-' "
                         f"(at most {MAX_TASK} characters)")
    return slug


_INSTANCE = re.compile(r"(#\d+|-\d+)$")


def structure_of(object_name: str) -> str:
    """The structure an object instance belongs to, as a task: "nucleus-17" and "lesion#2" are
    instances of "nucleus" and "lesion"; "lung-field" is its own structure."""
    return normalise_task(_INSTANCE.sub("", object_name or "") or None)


def declared_structure(object_name: str, declared) -> str:
    """The task an object adapts on a site that declares `declared` (normalised names): its
    structure when the site declares it, else the default task (as is an object whose name is no
    structure name). The simulations' local and federated arms route a sample by this one rule."""
    try:
        task = structure_of(object_name)
    except ValueError:
        return DEFAULT_TASK
    return task if task in {normalise_task(t) for t in declared} else DEFAULT_TASK


def is_default(task: str | None) -> bool:
    return normalise_task(task) == DEFAULT_TASK


MAX_TASKS = 16  # the most structures one site may declare for the federation (its identity stays small)


def normalise_tasks(names) -> list[str]:
    """A site's declared tasks, normalised, in order, each once: a list of names or one string of
    comma-separated names ("liver, Lesion core" -> ["liver", "lesion-core"]); "default" is the
    site's default task. ValueError for a bad name, more than `MAX_TASKS`, or none."""
    if isinstance(names, str):  # node config: "liver,lesion" (an empty piece is no name, not the default)
        names = [piece for piece in names.split(",") if piece.strip()]
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"tasks must be a list of structure names, got {type(names).__name__}")
    if len(names) > MAX_TASKS:
        raise ValueError(f"{len(names)} tasks declared: a site declares at most {MAX_TASKS}")
    out: list[str] = []
    for name in names:
        task = normalise_task(name)
        if task not in out:
            out.append(task)
    if not out:
        raise ValueError("no task declared")
    return out
