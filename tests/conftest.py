"""Shared pytest setup: GPU tests skip without CUDA; the real data set is located once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Keep test runs hermetic: no telemetry calls, no stray MLflow stores in the repo.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real development data; tests using it skip when it is absent."""
    if not (SHARED_DATA / "us_large_caps_daily_2005_2021.parquet").exists():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA
