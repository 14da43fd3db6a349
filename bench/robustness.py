"""Robustness benchmark: `python bench/robustness.py` (same as `fedpoint bench robustness --json`)."""

from fedpoint.cli import app

if __name__ == "__main__":
    app(["bench", "robustness", "--json"])
