"""The ``daily_us`` profile on the shipped real data (``../shared/data``): its walk-forward covers both
stress windows with test bars, and the whole DAG runs end to end on a slice (``bench/daily_us.py --quick``).
Skipped cleanly where the data set is absent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hmarl.config import load_config
from hmarl.data.splits import folds_for
from hmarl.steps import STEP_NAMES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BARS = DATA / "us_large_caps_daily_2005_2021.parquet"
BENCHMARK = DATA / "us_large_caps_daily_2005_2021_benchmark.parquet"

pytestmark = pytest.mark.skipif(not BARS.exists(), reason=f"{BARS} absent (the shipped data set)")


def test_profile_points_at_the_shipped_data_and_its_folds_cover_both_stress_windows():
    cfg = load_config(ROOT / "params.yaml", ["profile=daily_us"])
    assert (ROOT / cfg.data.path).resolve() == BARS.resolve()
    assert (ROOT / cfg.data.benchmark_path).resolve() == BENCHMARK.resolve()
    assert cfg.universe.top_n == 143 and cfg.universe.selection_at == "start"  # ranked without look-ahead
    stamps = pd.read_parquet(BENCHMARK, columns=["timestamp"])["timestamp"]
    days = stamps.dt.tz_convert(cfg.data.session_tz).dt.strftime("%Y-%m-%d").tolist()
    folds = folds_for(cfg, len(days))
    assert sorted(cfg.walk_forward.folds) == [f.index for f in folds]
    first_test, last_test = days[folds[0].test[0]], days[folds[-1].test[1] - 1]
    for name, (start, end) in cfg.walk_forward.stress_windows.items():
        assert first_test <= start and end <= last_test, f"{name} [{start}, {end}] outside the test bars"
    assert first_test < "2008-09-01" and last_test == days[-1]
    for a, b in zip(folds, folds[1:], strict=False):  # contiguous test bars, purged train/val before each
        assert a.test[1] == b.test[0] and b.val[1] < b.test[0] and b.train[1] < b.val[0]


@pytest.mark.slow
def test_quick_daily_us_bench_runs_the_whole_dag_on_real_bars(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "daily_us.py"), "--quick", "--out", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "daily_us" and result["quick"] and result["symbols"] == 8
    steps = result["steps"]
    wanted = list(STEP_NAMES[: STEP_NAMES.index("train_master") + 1])  # pipeline order up to the master
    assert list(steps)[: len(wanted)] == wanted
    assert {"stage5_seed_42", "walk_forward_fold_0", "gate", "promote"} <= set(steps)
    assert steps["gate"]["go"] in (0.0, 1.0)
    fold = json.loads(
        (tmp_path / "work" / "reports" / "walk_forward" / "fold_0" / "summary.json").read_text()
    )
    assert fold["num_bars"] == 249 and fold["buy_hold_sharpe"] is not None
