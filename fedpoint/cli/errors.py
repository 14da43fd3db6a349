"""One error style and one exit code for every `fedpoint` command.

Exit codes (documented in the README, "Commands"):
- 0: success;
- 2 (`USER_ERROR`): the user can fix it: a bad or missing option value, a file that is not there or
  not valid, a feature whose extra is not installed. The message starts with `error:` and names the
  option, field or file. Click's own usage errors (unknown option, bad choice) also exit 2;
- 1: an unexpected failure (a bug: the traceback is printed);
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

from typing import NoReturn

import typer

USER_ERROR = 2


def fail(message: str) -> NoReturn:
    """Print `error: <message>` on stderr and exit with USER_ERROR."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(USER_ERROR)


def describe(err: Exception) -> str:
    """A pydantic ValidationError as `field: message; ...`; anything else as its text."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        from fedpoint.shared.validation_errors import describe_validation_error

        return describe_validation_error(err)
    return str(err)
