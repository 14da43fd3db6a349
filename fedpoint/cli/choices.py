"""The closed vocabularies the CLI offers as choices, without importing what defines them.

`fedpoint --help` must not import torch, monai or numpy, so the names are repeated here; a test
(tests/cli/test_cli.py) keeps them equal to the registries they mirror. The adapter kinds'
registry needs only the standard library, so its names are read from it.
"""

from __future__ import annotations

import click

from fedpoint.shared.adapter_kinds import ADAPTER_KINDS as _KINDS

# fedpoint.shared.config.ADAPTATION_MODES
MODES: tuple[str, ...] = ("frozen", "mid", "post", "mid+post", "episodes", "mid+post+episodes")
# lora needs the `lora` extra
ADAPTER_KINDS: tuple[str, ...] = tuple(_KINDS)
# fedpoint.data.shifts.SHIFTS (descriptions: `fedpoint data shifts`)
SHIFTS: tuple[str, ...] = ("none", "gamma-low", "gamma-high", "bias", "noise", "blur", "lowres", "scale",
                           "scanner-b", "scanner-c")
# fedpoint.client.stream.VOLUME_ROUTES
VOLUME_ROUTES: tuple[str, ...] = ("propagate", "3d")


def choice(names: tuple[str, ...]) -> click.Choice:
    return click.Choice(names, case_sensitive=True)
