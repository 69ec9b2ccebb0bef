# harness — make targets. Each target sets up what it needs (idempotently) and runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# llama.cpp compiles from source on install; build it for any x86-64 CPU and in parallel.
# (LLAVA off: the multimodal library is never loaded for text; ~27% less compile time)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test lint typecheck pytest demo bench bench-quick soak migration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,local,postgres,bench,otel]'
	rm -f $(VENV)/.installed-* && touch $@

# the browser tests drive Debian's chromium (playwright's own download cannot work here)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# tests/test_pgbouncer.py runs harness behind Debian's pgbouncer (a private one per test)
PGBOUNCER := /usr/sbin/pgbouncer
$(PGBOUNCER):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer

setup: $(STAMP) $(CHROMIUM) $(PGBOUNCER)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q -ra

test: lint typecheck pytest

demo: setup
	$(BIN)/harness db upgrade
	$(BIN)/harness run --show-ledger "Write a short briefing on why decode is memory-bound, and what that means for AI chips and for firms' token budgets."

bench: setup
	$(BIN)/pip install -q -e '.[bench-peers]'
	$(BIN)/python -m bench --out docs/benchmarks.md

bench-quick: setup
	$(BIN)/python -m bench --quick

# an hour of a worker left running: the WAL's high-water mark and RSS (docs/soak.md)
soak: setup
	$(BIN)/python -m bench --only B14 --soak-minutes 60 --out docs/soak.md

migration: setup
	$(BIN)/python -m harness.store.migrations.new "$(MSG)"

clean:
	rm -rf $(VENV) var/*.db .mypy_cache .pytest_cache .ruff_cache
