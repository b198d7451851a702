# Digital Bridge developer commands. Every target installs what it needs on first use (make setup).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ROLE ?= admin
UNIT ?=
TEAMS ?=
MYPY_TARGETS := shared/src/shared $(patsubst %/app.py,%,$(wildcard services/*/*/app.py))

.PHONY: setup infra-up infra-down run demo test lint token contract bench rebuild-metrics clean-data

setup:
	@scripts/setup.sh

infra-up: setup
	@$(PY) -m shared.infra up

infra-down:
	@$(PY) -m shared.infra down

run: setup
	@$(PY) -m scripts.run $(ARGS)

demo: setup
	@$(PY) -m scripts.demo $(ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy $(MYPY_TARGETS) --no-error-summary && echo "mypy: ok"

test: setup lint
	@$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

token: setup
	@$(PY) -m shared.auth --role $(ROLE) $(if $(UNIT),--unit $(UNIT)) $(if $(TEAMS),--teams $(TEAMS))

contract: setup
	@$(PY) -m shared.catalog

bench: setup
	@$(PY) -m bench.run

rebuild-metrics: setup
	@$(PY) -m metrics.rebuild

clean-data: infra-down
	@rm -rf .data && echo "removed .data/"
