# healthcode: on a fresh machine with Python 3.11, `make run` starts the demo and `make test` runs the suite.
# Postgres and Redis: DATABASE_URL / REDIS_URL if set, else servers on the default local ports, else
# embedded ones under .healthcode/ (HEALTHCODE_EMBEDDED=1 forces embedded). See app/dev/servers.py.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV ?= .venv
STATE := .healthcode
# Reinstall only when pyproject.toml is newer than this stamp.
STAMP := $(VENV)/.installed
WITH_ENV := . ./$(STATE)/env.sh &&

# Options passed through to the load-test modules when set, e.g. `make bench DURATION=60 OUT=bench-results`.
LOAD_ARGS = $(if $(DURATION),--duration '$(DURATION)') $(if $(OUT),--out '$(OUT)') \
	$(if $(HOST),--host '$(HOST)') $(if $(WORKERS),--workers '$(WORKERS)')

.DEFAULT_GOAL := help
.PHONY: help install servers servers-stop run test test-fast test-redis-floor test-cluster cluster lint format wrk bench load chaos clean screens scale

help:
	@echo "make run               install, start Postgres and Redis, load the demo, serve the API"
	@echo "make test              install, start Postgres and Redis, run the whole test suite"
	@echo "make test-fast         the same without the tests marked slow (Locust, embedded servers, large samples)"
	@echo "make test-redis-floor  the cache tests on the lowest redis-py that pyproject.toml allows, in a venv of their own"
	@echo "make test-cluster      the suite but its slow tests with REDIS_URL on a Redis Cluster the dev servers start"
	@echo "make cluster           start a three-primary Redis Cluster on loopback and print its REDIS_URL (BASE_PORT)"
	@echo "make lint              ruff check, ruff format --check, mypy (strict, tests included)"
	@echo "make format            ruff format and ruff check --fix"
	@echo "make bench             signing and hot-path micro-benchmarks (DURATION, OUT)"
	@echo "make chaos             the fault suite: its own Postgres, Valkey and API, load, one fault at a time"
	@echo "make load              Locust load test, 45 s by default, against a local service it starts or HOST (DURATION, OUT, HOST, WORKERS)"
	@echo "make screens           the browser tests (Debian's Chromium), writing screenshots and page figures to docs/screens/"
	@echo "make scale             a synthetic province loaded end to end on its own database and Redis (PEOPLE, OUT, DURATION)"
	@echo "make servers-stop      stop the embedded Postgres and Valkey, if they were started"
	@echo "make clean             stop embedded servers, remove $(VENV) and $(STATE)"

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install python3.11 (or set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,embedded,load]'
	touch $@

install: $(STAMP)

servers: $(STAMP)
	$(VENV)/bin/python -m app.dev.servers up

run: servers
	$(WITH_ENV) $(VENV)/bin/healthcode demo && exec $(VENV)/bin/healthcode serve

test: servers
	$(WITH_ENV) $(VENV)/bin/pytest $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow. CI runs them all through `make test`.
test-fast: servers
	$(WITH_ENV) $(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

# cache/bulk.py reads private attributes of redis-py's asyncio connection, so the lowest redis-py that
# pyproject.toml allows is tested too: the cache tests, in a venv of their own with exactly that version.
REDIS_FLOOR := $(shell sed -n 's/^ *"redis\[hiredis\]>=\([0-9.]*\),.*/\1/p' pyproject.toml)
FLOOR_VENV := $(STATE)/venv-redis-floor
CACHE_TESTS := tests/test_cache.py tests/test_cache_stream.py tests/test_status_writer.py tests/test_rate_limit.py \
	tests/test_cache_connection.py \
	tests/test_cache_cluster.py

$(FLOOR_VENV)/.installed: pyproject.toml
	@test -n "$(REDIS_FLOOR)" || { echo 'no "redis[hiredis]>=X.Y,..." found in pyproject.toml' >&2; exit 1; }
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet -e '.[dev,embedded]' 'redis[hiredis]==$(REDIS_FLOOR)'
	touch $@

test-redis-floor: servers $(FLOOR_VENV)/.installed
	$(WITH_ENV) $(FLOOR_VENV)/bin/pytest -p no:cacheprovider $(CACHE_TESTS)

# The cache tests run on one server and on a cluster in `make test` already (tests/redis_targets.py); this
# runs everything else that reaches Redis through the app on a cluster too: three primaries with a replica
# each, started here by the dev servers' code and stopped after.
CLUSTER_DIR := $(STATE)/test-cluster

test-cluster: servers
	@HEALTHCODE_HOME=$(CLUSTER_DIR) $(VENV)/bin/python -m app.dev.servers cluster-up > $(STATE)/test-cluster-url
	$(WITH_ENV) REDIS_SINGLE_URL="$$REDIS_URL" REDIS_URL=$$(cat $(STATE)/test-cluster-url) \
		$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS); \
	status=$$?; HEALTHCODE_HOME=$(CLUSTER_DIR) $(VENV)/bin/python -m app.dev.servers cluster-down; exit $$status

cluster: $(STAMP)
	$(VENV)/bin/python -m app.dev.servers cluster-up $(if $(BASE_PORT),--base-port $(BASE_PORT))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# wrk drives the HTTP benchmark; Debian packages it.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }

bench: servers wrk
	$(WITH_ENV) $(VENV)/bin/python -m loadtests.bench $(LOAD_ARGS)

# Starts its own servers (never the ones `make servers` chose), so it needs only the install.
chaos: $(STAMP)
	$(VENV)/bin/python -m app.dev.chaos $(CHAOS_ARGS)

load: servers
	$(WITH_ENV) $(VENV)/bin/python -m loadtests.run $(LOAD_ARGS)

# The real-browser tests of the pages (also part of `make test`), keeping their screenshots and the measured
# transfer sizes and decode-to-verdict time in docs/screens/ for the README.
BROWSER_TESTS := tests/test_pages_code.py tests/test_pages_scan.py tests/test_pages_console.py

screens: servers
	rm -f docs/screens/figures.json
	$(WITH_ENV) HEALTHCODE_SCREENSHOTS=docs/screens $(VENV)/bin/pytest $(BROWSER_TESTS)

# A synthetic province through the ingestion path, on a database and a Redis server of its own: load time per
# kind, bytes per subject in Redis and Postgres, status p50/p99 (hits, misses), the capacity line.
PEOPLE ?= 100000
scale: servers
	$(WITH_ENV) $(VENV)/bin/python -m loadtests.bench.scale --people '$(PEOPLE)' $(if $(OUT),--out '$(OUT)') \
		$(if $(DURATION),--duration '$(DURATION)')

servers-stop:
	@if [ -x $(VENV)/bin/python ] && [ -d $(STATE) ]; then $(VENV)/bin/python -m app.dev.servers down; \
	else echo "no embedded servers to stop"; fi

clean: servers-stop
	rm -rf $(VENV) $(STATE)
