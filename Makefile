# Two commands on a fresh machine: `make run` (pipeline on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install run test test-slow lint format bench clean

# The venv is rebuilt when the dependency spec or the lock file changes.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	dvc repro

test: install
	pytest

test-slow: install
	pytest -m slow

lint: install
	ruff check .
	ruff format --check .

format: install
	ruff format .
	ruff check --fix .

bench: install
	for b in bench/*.py; do python $$b --quick || exit 1; done

clean:
	rm -rf data/canonical data/features reports metrics models runs mlruns.db mlartifacts
