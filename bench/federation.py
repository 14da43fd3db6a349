"""Federation benchmark: `python bench/federation.py` (same as `fedpoint bench federation --json`)."""

from fedpoint.cli import app

if __name__ == "__main__":
    app(["bench", "federation", "--json"])
