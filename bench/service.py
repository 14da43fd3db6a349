"""Service benchmark: `python bench/service.py` (same as `fedpoint bench service`): click round trip
over HTTP (p50, p95) against the in-process click, on the default 2D model."""

from fedpoint.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "service", "--json", *sys.argv[1:]])
