"""The real US large-cap set through the ingest step (skips when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hmarl.config import build_config
from hmarl.data.canonical import read_canonical
from hmarl.steps.runner import execute

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BARS = DATA / "us_large_caps_daily_2005_2021.parquet"
BENCHMARK = DATA / "us_large_caps_daily_2005_2021_benchmark.parquet"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not (BARS.exists() and BENCHMARK.exists()):
        pytest.skip(f"real data set not found in {DATA}")
    out = tmp_path_factory.mktemp("real") / "canonical"
    cfg = build_config(
        {},
        ["data.source=path", f"data.path={BARS}", f"data.benchmark_path={BENCHMARK}", "universe.top_n=150"],
    )
    metrics = execute("ingest", cfg, outputs={"canonical": str(out)})
    return metrics, read_canonical(out)


def test_real_set_shape_and_derived_bars_per_year(real):
    metrics, data = real
    meta = data.meta
    assert meta["num_symbols"] == 150 and meta["num_bars"] == 4103 and len(data.bars) == 150 * 4103
    assert meta["freq"] == "1D" and meta["bars_per_day"] == 1 and meta["dropped_symbols"] == {}
    assert meta["bars_per_year"] == pytest.approx(252, abs=1.0)  # derived from the calendar itself
    assert meta["start"].startswith("2005-01-03") and meta["end"].startswith("2021-04-21")
    assert data.bars["tradable"].all()
    assert metrics["seconds"] < 10  # vectorized: about a second on a laptop


def test_real_bars_are_the_input_untouched_and_spy_is_joined(real):
    _, data = real
    src = pd.read_parquet(BARS).sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(data.bars.drop(columns="tradable"), src, check_dtype=False)
    spy = pd.read_parquet(BENCHMARK)
    meta = data.meta
    assert meta["benchmark_symbol"] == "SPY" and meta["benchmark_source"] == "file"
    assert meta["benchmark_filled_bars"] == 0
    np.testing.assert_array_equal(data.benchmark["close"].to_numpy(), spy["close"].to_numpy())
    assert (data.benchmark["timestamp"] == data.timestamps).all() and len(data.benchmark) == 4103
