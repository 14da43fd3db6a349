"""The one way a pydantic validation error becomes text: `field.sub: message` per problem.

Used for every config (experiment, model, federation run config, sites, site service), every CLI
option and every request the site service checks (its own checks and FastAPI's). Duck-typed on
`err.errors()`, so it imports nothing (pydantic's and FastAPI's errors both have it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_VALUE_ERROR = "Value error, "  # pydantic's wrapping of a validator's own ValueError: noise to a reader


def validation_problems(
    err: Any,
    *,
    within: Sequence[object] = (),
    limit: int | None = None,
    root: str = "",
    hint: Callable[[tuple], str] | None = None,
) -> list[str]:
    """One `where: message` line per problem of `err` (at most `limit`).

    `within`: location parts put before each problem's own (`("sites[2]",)` -> `sites[2].shift`);
    `root`: the `where` of a problem with no location (none: the message alone);
    `hint(loc)`: text added after the message of a problem at `loc`."""
    lines = []
    for problem in list(err.errors())[:limit]:
        loc = tuple(problem.get("loc", ()))
        where = ".".join(str(p) for p in (*within, *loc)) or root
        message = str(problem.get("msg", "invalid"))
        message = message.removeprefix(_VALUE_ERROR)
        if hint is not None:
            message += hint(loc)
        lines.append(f"{where}: {message}" if where else message)
    return lines


def describe_validation_error(err: Any, **options: Any) -> str:
    """`validation_problems(err, **options)` on one line, separated by `; `."""
    return "; ".join(validation_problems(err, **options))
