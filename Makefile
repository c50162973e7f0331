# geomesh — two commands do all set-up on a fresh machine:
#   make run    create .venv, install, seed the demo product (first start), start the worker
#               and the app
#   make test   create .venv, install (incl. headless chromium when root), lint, type-check,
#               dependency audit (when OSV is reachable), test on both backends
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export GEOMESH_STORAGE_ROOT ?= $(CURDIR)/geomesh-data
PORT ?= 8501

.PHONY: install run demo test test-default test-backends lint typecheck audit-deps browser bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/geomesh demo seed --if-empty

# one command: the worker (outbox, re-clips, snapshots, previews) in the background, the app
# in the foreground; the worker is stopped (SIGTERM: it finishes its current unit) with the app
run: demo
	@$(VENV)/bin/geomesh worker & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT; \
	$(VENV)/bin/streamlit run app.py --server.headless true --server.port $(PORT) --browser.gatherUsageStats false

# Debian chromium for the browser tests (Playwright drives it via executable_path).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && apt-get install -y -q chromium) >/tmp/geomesh-apt.log 2>&1 || \
	  { echo "could not install chromium (see /tmp/geomesh-apt.log)"; exit 1; }; \
	else echo "chromium not installed and not root: browser tests will skip"; fi

lint: install
	$(VENV)/bin/ruff check geomesh tests pages ui app.py bench
	$(VENV)/bin/ruff format --check geomesh tests pages ui app.py bench
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

# pip-audit over the pinned requirements (OSV); says so and skips when OSV is unreachable
audit-deps: install
	.ci/audit-deps

# the suite on SQLite + a local directory
test-default: install browser
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=20

# the same suite on PostgreSQL (127.0.0.1:5432) + S3 on SeaweedFS started by the tests
test-backends: install
	GEOMESH_TEST_BACKEND=postgres-s3 $(VENV)/bin/pytest -q -p no:cacheprovider --durations=20 -m "not browser"

test: lint typecheck audit-deps test-default test-backends

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) geomesh-data .pytest_cache .mypy_cache .ruff_cache
