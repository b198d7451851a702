# Digital Bridge developer commands. Every target installs what it needs on first use (make setup).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ROLE ?= admin
UNIT ?=
TEAMS ?=
MYPY_TARGETS := shared/src/shared $(patsubst %/app.py,%,$(wildcard services/*/*/app.py))

.PHONY: setup infra-up infra-down run demo test lint token contract bench bench-scale rebuild-metrics topics dlq dlq-replay report \
	clean-data

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

# Every command below is scripts/cli.py: `.venv/bin/python -m scripts.cli --help` lists them all.
CLI := $(PY) -m scripts.cli

token: setup
	@$(CLI) token --role $(ROLE) $(if $(UNIT),--unit $(UNIT)) $(if $(TEAMS),--teams $(TEAMS))

contract: setup
	@$(CLI) contract $(ARGS)

bench: setup
	@$(PY) -m bench.run

# The campaign at 10x and 100x through the APIs (an hour or more): bench/scale.py. ARGS="--scales 10".
bench-scale: setup
	@$(PY) -m bench.scale $(ARGS)

rebuild-metrics: setup
	@$(CLI) rebuild $(ARGS)

# Topics, end offsets and consumer-group lag.
topics: setup
	@$(CLI) topics $(ARGS)

# Dead letters: `make dlq TOPIC=visits`; replay after the fix: `make dlq-replay TOPIC=visits ARGS=--all`.
dlq: setup
	@$(CLI) dlq list $(TOPIC) $(ARGS)

dlq-replay: setup
	@$(CLI) dlq replay $(TOPIC) $(ARGS)

# The weekly report table of the metrics service as a file: `make report OUT=week.xlsx ARGS="--unit QN-HALONG"`.
OUT ?= report.xlsx
report: setup
	@$(CLI) report $(OUT) $(ARGS)

clean-data: infra-down
	@rm -rf .data && echo "removed .data/"
