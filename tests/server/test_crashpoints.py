"""FEDPOINT_CRASH_AT: a named point (and round) where the coordinator's process exits hard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpoint.server.crashpoints import CRASH_ENV, CRASH_EXIT_CODE, POINTS, parse_crash_at

REPO = Path(__file__).resolve().parents[2]


def test_the_setting_names_a_known_point_and_optionally_a_round():
    assert parse_crash_at("after-commit:3") == ("after-commit", 3)
    assert parse_crash_at("mid-commit") == ("mid-commit", None)
    with pytest.raises(ValueError, match="unknown point 'after-lunch'"):
        parse_crash_at("after-lunch")
    with pytest.raises(ValueError, match="whole number"):
        parse_crash_at("round-start:two")


@pytest.mark.parametrize(("setting", "code"), [("after-ledger:2", CRASH_EXIT_CODE), ("after-ledger:3", 0),
                                               ("before-commit:2", 0), ("after-ledger", CRASH_EXIT_CODE)])
def test_the_process_exits_only_at_the_named_point_and_round(setting, code):
    program = ("from fedpoint.server.crashpoints import POINTS, crash_point\n"
               "for point in POINTS[3:]:\n    crash_point(point, 2)\n")  # after-commit, after-ledger, after-evaluate
    env = {**os.environ, CRASH_ENV: setting, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == code
    assert ("exiting at after-ledger of round 2" in done.stderr) == (code == CRASH_EXIT_CODE)
    assert POINTS[3:5] == ("after-commit", "after-ledger")
