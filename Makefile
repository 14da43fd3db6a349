# fedpoint: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FEDPOINT := $(VENV)/bin/fedpoint
STAMP := $(VENV)/.fedpoint-installed
# Flower must never install dependencies at run time (uv would pull a CUDA torch).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup system-packages test test-fast demo demo-full bench data clean

setup: $(STAMP) system-packages

# torch first, pinned to the CPU build that lies on disk; then the package and its dev extras.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium for the real-browser test (Playwright drives it; no browser download) and,
# optionally, the Colin27 brain with its AAL atlas and InVesalius's head CT (training data). All best
# effort: tests say when one is missing.
system-packages:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/mricron/templates ] \
	    || [ ! -d /usr/share/doc/invesalius-examples/examples ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium mricron-data invesalius-examples >/dev/null \
	    || echo "note: could not install chromium/mricron-data/invesalius-examples from apt; the browser test, colin27 and the head-CT training source will be skipped"; \
	  else echo "note: apt not available (or not root): install chromium yourself for the browser test"; fi; \
	fi

data: $(STAMP)
	$(FEDPOINT) data prepare

test: setup data
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup data
	$(FEDPOINT) simulate --config demo --out results/demo

demo-full: setup data
	$(FEDPOINT) simulate --config demo --full --out results/demo-full

bench: setup
	$(PY) bench/engine.py
	$(PY) bench/federation.py
	$(PY) bench/service.py

clean:
	rm -rf results .pytest_cache
