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

.PHONY: setup system-packages system-packages-note test test-fast demo demo-full bench data dist fab clean

SYSTEM_PACKAGES := chromium mricron-data invesalius-examples orthanc orthanc-dicomweb nginx

# Installs the Python side only; system packages are installed by `make system-packages` (or by
# `make test`, which needs Chromium), and `make setup` says what it would install.
setup: $(STAMP) system-packages-note

# torch first, pinned (2.13.0: on this project's package index, a CPU build; elsewhere choose the
# CPU or CUDA build yourself, README "Installing"); then the package with every extra.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

# Debian's Chromium for the real-browser test (Playwright drives it; no browser download), Orthanc
# with its DICOMweb plugin for the PACS test and, optionally, the Colin27 brain with its AAL atlas and
# InVesalius's head CT (training data). All best effort: tests say when one is missing. Runs apt-get
# only as root on a machine with apt. (Debian starts an `orthanc` service on port 8042; the test runs
# its own Orthanc on free ports.) nginx is the coordinator's proxy (deploy/start-proxy.sh) in the
# proxy tests, which start their own nginx on free ports.
system-packages:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/mricron/templates ] \
	    || [ ! -d /usr/share/doc/invesalius-examples/examples ] || [ ! -x /usr/sbin/Orthanc ] \
	    || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || [ ! -x /usr/sbin/nginx ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null \
	    || echo "note: could not install $(SYSTEM_PACKAGES) from apt; the browser test, the Orthanc test, the proxy tests, colin27 and the head-CT training source will be skipped"; \
	  else echo "note: apt not available (or not root): install chromium (browser test), orthanc orthanc-dicomweb (PACS test) and nginx (proxy tests) yourself"; fi; \
	fi

system-packages-note:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/mricron/templates ] \
	    || [ ! -d /usr/share/doc/invesalius-examples/examples ] || [ ! -x /usr/sbin/Orthanc ] \
	    || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || [ ! -x /usr/sbin/nginx ]; then \
	  echo "note: optional system packages missing: $(SYSTEM_PACKAGES) (browser test, Orthanc PACS test, colin27, head-CT training source, coordinator proxy tests)."; \
	  echo "      \`make system-packages\` (as root, Debian/Ubuntu) would run: apt-get install $(SYSTEM_PACKAGES)"; \
	fi

data: $(STAMP)
	$(FEDPOINT) data prepare

# Two pytest workers (pytest-xdist): most tests wait on servers, subprocesses or one torch thread, so
# two share a 2-core machine well. A test file stays on one worker and the simulated Flower federations
# run one after another (tests/conftest.py). --no-loadscope-reorder keeps the conftest's order of those
# groups, the longest first (xdist would queue the groups with most tests first, leaving the few-test,
# minutes-long ones to one worker at the end). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup system-packages data
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

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

# The release: wheel + sdist (with the packaged checkpoints and web assets) and the Flower app
# bundle (code and configs only, see fab-include in pyproject.toml), all in dist/.
dist: $(STAMP)
	rm -rf dist/*.whl dist/*.tar.gz build/lib
	$(PY) -m build --no-isolation --outdir dist .
	@ls -l dist

fab: $(STAMP)
	mkdir -p dist
	rm -f dist/*.fab
	cd dist && ../$(VENV)/bin/flwr build --app ..
	@ls -l dist/*.fab

clean:
	rm -rf results .pytest_cache build dist
