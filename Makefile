# crmsync developer commands. `make demo` and `make test` do all the set-up on a fresh
# machine: `make setup` creates .venv, makes PostgreSQL and Redis reachable (starting
# private ones under .crmsync/ if needed) and migrates. See README.md.

SHELL := /bin/bash
VENV := .venv
# The servers `make setup` chose (.crmsync/env); setup prefers the CRMSYNC_* URLs of
# your shell whenever they answer, so an explicit environment wins.
WITH_ENV := . ./.crmsync/env &&
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup venv test test-fast lint format demo bench cluster cluster-stop services-stop clean

help:
	@echo "make demo         set up, then run the zero-config showcase"
	@echo "make test         set up, then run the whole test suite (what CI runs)"
	@echo "make test-fast    the suite without tests marked slow"
	@echo "make lint         ruff check, ruff format --check, mypy --strict"
	@echo "make format       apply ruff's fixes and formatting"
	@echo "make bench        set up, then benchmark against the mock CRMs"
	@echo "make setup        .venv + PostgreSQL + Redis + migrations (idempotent, fast)"
	@echo "make cluster      start (or reuse) a private Redis Cluster: 3 masters + 3 replicas"
	@echo "make cluster-stop stop it"
	@echo "make services-stop  stop the private servers setup and the tests may have started"
	@echo "make clean        stop them and delete .crmsync/ (local data)"

setup:
	@scripts/setup.sh

venv:
	@scripts/setup.sh --venv-only

# pytest exits 5 when it collected nothing: that is a broken run, not a pass.
define run_pytest
	@$(WITH_ENV) $(VENV)/bin/pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	exit $$rc
endef

test: setup
	$(call run_pytest,)

test-fast: setup
	$(call run_pytest,-m "not slow")

# Every checker runs even when an earlier one fails, so one run shows all problems.
lint: venv
	@rc=0; \
	for cmd in "ruff check ." "ruff format --check ." "mypy"; do \
		echo "$(VENV)/bin/$$cmd"; $(VENV)/bin/$$cmd || rc=1; \
	done; exit $$rc

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: setup
	@$(WITH_ENV) $(VENV)/bin/crmsync demo

bench: setup
	@$(WITH_ENV) $(VENV)/bin/crmsync bench --scenario all

# The cluster's seed URL is the last line; use it with CRMSYNC_REDIS_MODE=cluster.
cluster:
	@python3 scripts/redis_cluster.py start

cluster-stop:
	@python3 scripts/redis_cluster.py stop

services-stop: cluster-stop
	@python3 scripts/ensure_services.py --stop

clean:
	@python3 scripts/redis_cluster.py stop --purge
	@python3 scripts/ensure_services.py --stop --purge
	rm -rf .crmsync
