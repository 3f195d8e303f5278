# Two commands on a fresh machine: `make run` (pipeline on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install run run-daily-us test test-slow test-cluster cluster-deps image-tag lint format bench clean

# The venv is rebuilt when the dependency spec or the lock file changes.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -m hmarl.cbuild --prebuild  # C kernels into src/hmarl/_kernels (skipped without a compiler)
	touch $@

install: $(VENV)/.installed

run: install
	dvc repro

# The whole DAG on the shipped real data (../shared/data beside the clone; see README "Real data: daily_us").
# DVC's foreach reads the top-level walk_forward.folds, so the fold list is set next to the profile. Runs in
# the workspace (not --temp: the data path is relative to the repository root).
DAILY_US_DATA := ../shared/data/us_large_caps_daily_2005_2021.parquet
run-daily-us: install
	@test -f $(DAILY_US_DATA) || { echo "run-daily-us: $(DAILY_US_DATA) not found (the shipped data set)"; exit 1; }
	dvc exp run -S profile=daily_us -S 'walk_forward.folds=[0,1,2,3,4,5]'

test: install
	pytest

test-slow: install
	pytest -m slow

# Cluster fidelity (tests/test_cluster_fidelity.py): a real MLflow server (basic auth, PostgreSQL) on
# 127.0.0.1 and the compiled pipeline run with every task as UID 10001, checkout and HOME read-only.
# Needs root (setpriv, unshare --mount), Debian's PostgreSQL and python3.11 (installed here when missing).
test-cluster: install cluster-deps
	pytest -m cluster -p no:cacheprovider tests/test_cluster_fidelity.py

cluster-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ ! -x /usr/bin/python3.11 ] \
		|| ! command -v setpriv >/dev/null || ! command -v unshare >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			postgresql python3.11 python3.11-venv util-linux mount; \
	fi

# The images' tag: package version + commit (what `hmarl pipeline compile` writes into the IR).
image-tag: install
	@python -c "import sys; sys.path.insert(0, '.'); from pipelines.cluster import image_tag; print(image_tag())"

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
