# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench chaos db-migrate db-rollback db-status install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/birthday-scheduler db migrate
	exec $(BIN)/birthday-scheduler all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# System tools the suite runs (promtool, prometheus, chromium), installed with apt-get when
# missing; see the script.
.PHONY: tools
tools:
	scripts/ensure-tools.sh

test: tools lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The benchmark suite (docs/BENCHMARKS.md): one table, bench/results/latest.json; needs wrk.
bench: tools $(STAMP)
	$(BIN)/python -m bench

# Restarts the machine's PostgreSQL and RabbitMQ during the run (see docs/RUNBOOK.md).
chaos: $(STAMP)
	$(BIN)/python -m chaos

db-migrate: $(STAMP)
	$(BIN)/birthday-scheduler db migrate

db-rollback: $(STAMP)
	$(BIN)/birthday-scheduler db rollback

db-status: $(STAMP)
	$(BIN)/birthday-scheduler db status

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
