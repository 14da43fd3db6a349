"""Which adapter bank a site receives and which banks its reply updates.

One site-general bank learns from every site; one bank per modality learns only from sites of that
modality. Strategy "banks" sends a site its modality bank once that bank exists (else the general
one); strategy "general" is plain federated averaging of one shared adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

GENERAL = "general"
MODALITY_PREFIX = "modality-"
STRATEGIES = ("general", "banks")

_SAFE_BANK = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def modality_bank(modality: str) -> str:
    """The bank name for a modality: "CT" -> "modality-ct", "MR T1" -> "modality-mr-t1"."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(modality).strip().lower()).strip("-")
    if not slug:
        raise ValueError(f"modality {modality!r} gives no usable bank name")
    return check_bank_name(MODALITY_PREFIX + slug)


def check_bank_name(bank: str) -> str:
    """Bank names become folder names: lowercase letters, digits and dashes only."""
    if not isinstance(bank, str) or not _SAFE_BANK.match(bank):
        raise ValueError(f"bad bank name {bank!r}: use lowercase letters, digits and dashes (e.g. 'general', 'modality-ct')")
    return bank


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown bank strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return strategy


def bank_for_site(modality: str | None, strategy: str, existing_banks: Iterable[str]) -> str:
    """The bank whose adapter a site of this modality receives this round."""
    if _check_strategy(strategy) == "general" or not modality:
        return GENERAL
    own = modality_bank(modality)
    return own if own in set(existing_banks) else GENERAL


def banks_to_update(modality: str | None, strategy: str) -> list[str]:
    """The banks a site's reply is aggregated into: always the general bank, plus its modality
    bank under strategy "banks"."""
    if _check_strategy(strategy) == "general" or not modality:
        return [GENERAL]
    return [GENERAL, modality_bank(modality)]
