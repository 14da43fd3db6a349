"""Coordinator restarts: `python bench/restarts.py [KILLS] [SEED]` kills a simulated federation's
coordinator KILLS times (default 20) at random named points (fedpoint.server.crashpoints), resumes
one round after each, and checks that no round is lost, repeated or misreported. It runs the slow
test that does two kills in CI, with more kills, and prints what each kill did."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    kills = sys.argv[1] if len(sys.argv) > 1 else "20"
    seed = sys.argv[2] if len(sys.argv) > 2 else "0"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "restarts.json"
        env = {**os.environ, "FEDPOINT_RESTART_KILLS": kills, "FEDPOINT_RESTART_SEED": seed,
               "FEDPOINT_RESTART_REPORT": str(report)}
        test = "tests/simulations/test_flower_sim.py::test_kills_at_random_named_points_never_lose_repeat_or_misreport_a_round"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", test],
                              cwd=REPO, env=env)
        if report.exists():
            print(json.dumps({"passed": done.returncode == 0, **json.loads(report.read_text())}, indent=1))
        sys.exit(done.returncode)
