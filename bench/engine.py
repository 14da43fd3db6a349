"""Engine benchmark: `python bench/engine.py [--size 256] [--spatial-dims 3] [--device cuda]` (same as `fedpoint bench engine`)."""

from fedpoint.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "engine", "--json", *sys.argv[1:]])
