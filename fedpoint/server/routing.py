"""Which adapter bank a site receives and which banks its reply updates.

One site-general bank learns from every site; one bank per modality learns only from sites of that
modality. Strategy "banks" sends a site its modality bank once that bank exists (else the general
one); strategy "general" is plain federated averaging of one shared adapter.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

GENERAL = "general"
MODALITY_PREFIX = "modality-"
STRATEGIES = ("general", "banks")

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
