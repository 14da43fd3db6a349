from __future__ import annotations

import pytest

from fedpoint.server.routing import GENERAL, bank_for_site, banks_to_update, check_bank_name, modality_bank


def test_modality_bank_names_are_safe_lowercase_ids():
    assert modality_bank("CT") == "modality-ct"
    assert modality_bank(" MR T1/flair ") == "modality-mr-t1-flair"
    assert modality_bank("../../etc") == "modality-etc"
    with pytest.raises(ValueError):
        modality_bank("///")
    with pytest.raises(ValueError):
        check_bank_name("../general")


def test_bank_for_site_falls_back_to_general_until_the_modality_bank_exists():
    assert bank_for_site("CT", "banks", [GENERAL]) == GENERAL
    assert bank_for_site("CT", "banks", [GENERAL, "modality-ct"]) == "modality-ct"
    assert bank_for_site("MR", "banks", [GENERAL, "modality-ct"]) == GENERAL
    assert bank_for_site("CT", "general", [GENERAL, "modality-ct"]) == GENERAL
    assert bank_for_site(None, "banks", [GENERAL, "modality-ct"]) == GENERAL


def test_banks_to_update():
    assert banks_to_update("CT", "banks") == [GENERAL, "modality-ct"]
    assert banks_to_update("CT", "general") == [GENERAL]
    with pytest.raises(ValueError, match="unknown bank routing"):
        banks_to_update("CT", "fedprox")
