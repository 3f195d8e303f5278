"""Real data in (issue 16, data side): exchange calendars, benchmark/exogenous holes, no made-up benchmark,
bad prints, and a user's hourly bars through ingest -> validate -> features with only data/split settings.

The hourly test market is laid out by hand on the NYSE's regular sessions (09:30-16:00 New York, bars
labelled by their start, 7 a day), 2023-10-02 .. 2024-01-05: Thanksgiving (11-23), Christmas and New
Year's Day are closed and 2023-11-24 closes at 13:00 (4 bars, the last a half bar). Those dates are written
here, independently of the calendar library the code uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hmarl.cli import main
from hmarl.config import build_config
from hmarl.data.canonical import read_canonical
from hmarl.data.store import FeatureStore
from hmarl.errors import DataError
from hmarl.steps.runner import execute

HOLIDAYS = ("2023-11-23", "2023-12-25", "2024-01-01")
EARLY_CLOSE = "2023-11-24"  # 13:00 close: bars at 09:30, 10:30, 11:30, 12:30
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")
SPLITS = ["splits.n_folds=2", "splits.train_bars=150", "splits.val_bars=30", "splits.test_bars=60"]


def nyse_hours() -> pd.DatetimeIndex:
    days = pd.bdate_range("2023-10-02", "2024-01-05").difference(pd.DatetimeIndex(HOLIDAYS))
    stamps = []
    for day in days:
        hours = 4 if day == pd.Timestamp(EARLY_CLOSE) else 7
        stamps += [day + pd.Timedelta(hours=9, minutes=30 + 60 * h) for h in range(hours)]
    return pd.DatetimeIndex(stamps).tz_localize("America/New_York").tz_convert("UTC")


STAMPS = nyse_hours()
assert len(STAMPS) == 66 * 7 + 4


def hourly_bars(stamps: pd.DatetimeIndex = STAMPS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for i, symbol in enumerate(SYMBOLS):
        n = len(stamps)
        close = 40.0 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
        open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.001, n))
        frames.append(pd.DataFrame({
            "symbol": symbol, "timestamp": stamps, "open": open_,
            "high": np.maximum(open_, close) * (1 + rng.uniform(0, 0.002, n)),
            "low": np.minimum(open_, close) * (1 - rng.uniform(0, 0.002, n)),
            "close": close, "volume": rng.uniform(1e5, 1e6, n),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def benchmark(stamps: pd.DatetimeIndex = STAMPS, hole: slice | None = None) -> pd.DataFrame:
    close = 400 * np.exp(np.cumsum(np.random.default_rng(9).normal(0, 0.003, len(stamps))))
    frame = pd.DataFrame({"symbol": "SPY", "timestamp": stamps, "close": close})
    return frame.drop(frame.index[hole]) if hole is not None else frame


def write(frame: pd.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


def ingest(tmp_path: Path, bars: pd.DataFrame, *overrides: str, name: str = "canonical") -> Path:
    cfg = build_config({}, ["data.source=path", f"data.path={write(bars, tmp_path / 'raw' / 'bars.parquet')}",
                            *overrides])  # fmt: skip
    execute("ingest", cfg, outputs={"canonical": str(tmp_path / name)})
    return tmp_path / name


def validate(tmp_path: Path, canonical: Path, *overrides: str) -> dict:
    """The validate step's summary; a DataError (with the failed summary) when it fails."""
    report = tmp_path / "reports" / canonical.name
    try:
        execute(
            "validate",
            build_config({}, list(overrides)),
            {"canonical": str(canonical)},
            {"report": str(report)},
        )
    except DataError as exc:
        summary = json.loads((report.parent / f"{report.name}.failed" / "summary.json").read_text())
        raise DataError(f"{exc}\nSUMMARY {json.dumps(summary['failed'])}") from None
    return json.loads((report / "summary.json").read_text())


# --------------------------------------------------------------------------- calendars
def test_holidays_and_early_closes_are_not_gaps_with_the_exchange_calendar(tmp_path):
    canonical = ingest(tmp_path, hourly_bars(), "data.calendar=XNYS")
    meta = read_canonical(canonical).meta
    assert meta["calendar"] == "XNYS" and meta["freq"] == "1h" and meta["bars_per_day"] == 7
    # NYSE 2023 + 2024: 502 sessions, 5 of them 13:00 closes (07-03, 11-24; 07-03, 11-29, 12-24) -> 497 x 7 + 5 x 4
    assert meta["bars_per_year"] == pytest.approx((497 * 7 + 5 * 4) / 2)
    summary = validate(tmp_path, canonical)
    assert summary["status"] == "passed" and summary["data"]["calendar"] == "XNYS"
    gaps = next(r for r in summary["results"] if r["name"] == "calendar_gaps")
    assert "XNYS exchange calendar" in gaps["description"] and gaps["success"]

    # without a calendar the data's own weekdays expect bars on Thanksgiving: the old failure, and a hint
    plain = ingest(tmp_path, hourly_bars(), name="plain")
    with pytest.raises(DataError, match=r"calendar_gaps .*set data.calendar, e.g. XNYS"):
        validate(tmp_path, plain)


def test_a_missing_session_or_bar_is_still_a_gap_naming_the_row(tmp_path):
    lost_day = STAMPS[
        STAMPS.tz_convert("America/New_York").normalize() == pd.Timestamp("2023-12-12", tz="America/New_York")
    ]
    canonical = ingest(tmp_path, hourly_bars(STAMPS.difference(lost_day)), "data.calendar=XNYS")
    with pytest.raises(DataError, match=r"calendar_gaps .*1 calendar timestamp .* timestamp=2023-12-13T14:30:00\+00:00 "
                                        r"previous=2023-12-11T20:30:00\+00:00 gap_bars=7"):  # fmt: skip
        validate(tmp_path, canonical)

    lost_bar = pd.DatetimeIndex([pd.Timestamp("2023-12-12 12:30", tz="America/New_York").tz_convert("UTC")])
    canonical = ingest(tmp_path, hourly_bars(STAMPS.difference(lost_bar)), "data.calendar=XNYS", name="one")
    assert validate(tmp_path, canonical)["status"] == "passed"  # within validation.max_calendar_gap_bars=5
    with pytest.raises(DataError, match=r"timestamp=2023-12-12T18:30:00\+00:00 previous=2023-12-12T16:30:00\+00:00 "
                                        r"gap_bars=1"):  # fmt: skip
        validate(tmp_path, canonical, "validation.max_calendar_gap_bars=0")


def test_bars_outside_the_sessions_are_named(tmp_path):
    extra = pd.DatetimeIndex([pd.Timestamp("2023-11-23 10:30", tz="America/New_York").tz_convert("UTC")])
    canonical = ingest(tmp_path, hourly_bars(STAMPS.union(extra)), "data.calendar=XNYS")
    with pytest.raises(
        DataError, match=r"calendar_sessions .*outside every XNYS session.* timestamp=2023-11-23T15:30"
    ):
        validate(tmp_path, canonical)


def test_an_unknown_calendar_names_the_key(tmp_path):
    with pytest.raises(Exception, match=r"data.calendar: unknown calendar 'XNYZ'"):
        ingest(tmp_path, hourly_bars(), "data.calendar=XNYZ")


def test_round_the_clock_daily_bars_annualize_over_every_day(tmp_path):
    days = pd.date_range("2021-01-01", "2022-12-31", freq="D", tz="UTC")
    canonical = ingest(tmp_path, hourly_bars(days).assign(symbol=lambda f: f["symbol"]), "data.calendar=24/7")
    assert read_canonical(canonical).meta["bars_per_year"] == pytest.approx(365.0)
    assert validate(tmp_path, canonical)["status"] == "passed"


# --------------------------------------------------------------------------- holes and absent benchmarks
def test_exogenous_holes_are_filled_up_to_the_sources_limit(tmp_path):
    local = pd.Series(STAMPS, index=STAMPS.tz_convert("America/New_York").normalize())
    closes = pd.DatetimeIndex(local.groupby(level=0).max()) + pd.Timedelta(hours=1)  # one value a session
    vix = pd.DataFrame({"timestamp": closes, "close": np.linspace(15, 25, len(closes))})
    spec = {"name": "vix", "path": write(vix, tmp_path / "raw" / "vix.parquet")}
    with pytest.raises(DataError, match=r"data.exogenous\[vix\]: no new value for 6 bars .*raise "
                                        r"data.exogenous\[vix\].max_fill_bars or data.max_fill_bars"):  # fmt: skip
        ingest(tmp_path, hourly_bars(), "data.calendar=XNYS", f"data.exogenous=[{json.dumps(spec)}]")
    spec["max_fill_bars"] = 6  # a daily series on hourly bars carries its value through the session
    canonical = ingest(tmp_path, hourly_bars(), "data.calendar=XNYS", f"data.exogenous=[{json.dumps(spec)}]")
    filled = read_canonical(canonical).meta["exogenous_filled_bars"]["vix"]
    assert filled == len(STAMPS) - 7 - 66  # every bar but the first of each session after the first
    assert validate(tmp_path, canonical)["data"]["filled_bars"]["vix"] == filled


def test_without_a_benchmark_features_use_the_universe_index_and_say_so(tmp_path):
    canonical = ingest(tmp_path, hourly_bars(), "data.calendar=XNYS")
    assert not (canonical / "benchmark.parquet").exists()
    summary = validate(tmp_path, canonical)
    assert any("no benchmark" in n for n in summary["notes"]) and summary["data"]["benchmark"] is None
    (tmp_path / "validate").mkdir()
    (tmp_path / "validate" / "summary.json").write_text(json.dumps(summary))
    cfg = build_config({}, SPLITS)
    execute("features", cfg, {"canonical": str(canonical), "validation": str(tmp_path / "validate")},
            {"store": str(tmp_path / "features")})  # fmt: skip
    store = FeatureStore.load(tmp_path / "features")
    assert store.meta["benchmark"] is None and store.meta["market_reference"] == "equal_weight_universe"
    close = store.price("close")
    np.testing.assert_allclose(
        store.benchmark[1:] / store.benchmark[:-1], (close[1:] / close[:-1]).mean(axis=1)
    )


# --------------------------------------------------------------------------- bad prints
def test_a_reverting_print_fails_with_its_row_and_can_be_allow_listed(tmp_path):
    bars = hourly_bars()
    row = int(np.flatnonzero((bars["symbol"] == "CCC") & (bars["timestamp"] == STAMPS[200]))[0])
    bars.loc[row, ["open", "high", "low", "close"]] *= 1000.0
    canonical = ingest(tmp_path, bars, "data.calendar=XNYS", "data.symbols=[AAA,BBB,CCC,DDD,EEE,FFF]")
    stamp = STAMPS[200].isoformat()
    with pytest.raises(
        DataError,
        match=rf"bad_prints \(.*\): 1 row whose open/close went out and came back .* symbol=CCC timestamp={re.escape(stamp)}",
    ):
        validate(tmp_path, canonical)
    allow = f'validation.allow_bad_prints=[{{symbol: CCC, timestamp: "{stamp}"}}]'
    summary = validate(tmp_path, canonical, allow)
    (allowed,) = summary["data"]["allowed_bad_prints"]
    assert (allowed["symbol"], allowed["timestamp"]) == ("CCC", stamp) and allowed["score"] > 1000


def test_a_one_bar_spike_fails_but_a_level_shift_does_not(tmp_path):
    bars = hourly_bars()
    ccc = np.flatnonzero(bars["symbol"] == "CCC")
    spike = bars.copy()
    spike.loc[ccc[300], "high"] *= 1.6  # one high print, back at the next bar: ~100 sigma of these bars
    canonical = ingest(tmp_path, spike, "data.calendar=XNYS")
    with pytest.raises(
        DataError, match=r"bad_prints_high_low .* symbol=CCC timestamp=" + re.escape(STAMPS[300].isoformat())
    ):
        validate(tmp_path, canonical)
    shift = bars.copy()
    shift.loc[ccc[300:], ["open", "high", "low", "close"]] *= 1.6  # a real jump that stays: no bad print
    assert (
        validate(tmp_path, ingest(tmp_path, shift, "data.calendar=XNYS", name="shift"))["status"] == "passed"
    )


# --------------------------------------------------------------------------- intraday through the step CLI
def test_hourly_bars_run_ingest_validate_features_with_only_data_and_split_settings(tmp_path):
    raw = tmp_path / "raw"
    sets = [f"data.path={write(hourly_bars(), raw / 'bars.parquet')}", "data.source=path",
            f"data.benchmark_path={write(benchmark(hole=slice(100, 102)), raw / 'spy.parquet')}",
            "data.calendar=XNYS", *SPLITS]  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    paths = {
        "canonical": tmp_path / "canonical",
        "report": tmp_path / "validate",
        "store": tmp_path / "features",
    }
    steps = [("ingest", {}, {"canonical"}), ("validate", {"canonical"}, {"report"}),
             ("features", {"canonical", "validation"}, {"store"})]  # fmt: skip
    for step, ins, outs in steps:
        args = ["step", step, "--params", str(params), "--metrics", str(tmp_path / f"{step}.json")]
        for name in sorted(ins):
            args += ["--input", f"{name}={paths['report' if name == 'validation' else name]}"]
        args += [a for name in sorted(outs) for a in ("--output", f"{name}={paths[name]}")]
        assert main(args + [a for s in sets for a in ("--set", s)]) == 0, step
    meta = read_canonical(paths["canonical"]).meta
    assert (
        meta["benchmark_filled_bars"] == 2 and meta["calendar"] == "XNYS" and meta["num_bars"] == len(STAMPS)
    )
    summary = json.loads((paths["report"] / "summary.json").read_text())
    assert summary["status"] == "passed" and summary["data"]["filled_bars"]["benchmark"] == 2
    store = FeatureStore.load(paths["store"])
    assert (store.meta["freq"], store.meta["calendar"], store.num_bars) == ("1h", "XNYS", len(STAMPS))
    assert store.meta["bars_per_year"] == meta["bars_per_year"] and len(store.meta["folds"]) == 2
    assert np.isfinite(store.features).all() and np.isfinite(store.regime).all()


# --------------------------------------------------------------------------- the shipped daily data
REAL_SYMBOLS = (
    "[MS, C, LVS, AMD, OXY, MDT, MMM, HD, AAPL, APD, MAR, BAC]"  # the crisis movers + flash crashes
)


def test_shipped_crisis_moves_pass_on_the_nyse_calendar_and_a_planted_print_fails(shared_data, tmp_path):
    bars = pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021.parquet")
    spy = write(
        pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021_benchmark.parquet"), tmp_path / "spy.pq"
    )
    sets = ("data.calendar=XNYS", f"data.benchmark_path={spy}", f"data.symbols={REAL_SYMBOLS}")
    canonical = ingest(tmp_path, bars, *sets)
    meta = read_canonical(canonical).meta
    assert meta["bars_per_year"] == pytest.approx(252, abs=0.5) and meta["calendar"] == "XNYS"
    summary = validate(tmp_path, canonical)  # every session, no gap, no bad print: genuine moves pass
    assert summary["status"] == "passed"
    big = {(o["symbol"], o["timestamp"][:10]) for o in summary["outliers"]}
    assert {("MS", "2008-10-13"), ("LVS", "2008-10-29"), ("C", "2008-11-24"), ("AMD", "2016-04-22")} <= big

    row = int(
        np.flatnonzero((bars["symbol"] == "AAPL") & (bars["timestamp"] == "2012-06-12 13:30:00+00:00"))[0]
    )
    bars.loc[row, ["open", "high", "low", "close"]] *= 1000.0
    canonical = ingest(tmp_path, bars, *sets, name="printed")
    with pytest.raises(
        DataError, match=r"bad_prints \(.*\): 1 row .* symbol=AAPL timestamp=2012-06-12T13:30"
    ):
        validate(tmp_path, canonical)
    assert (
        validate(
            tmp_path, canonical, 'validation.allow_bad_prints=[{symbol: AAPL, timestamp: "2012-06-12"}]'
        )["status"]
        == "passed"
    )


# --------------------------------------------------------------------------- the whole DAG, hourly, no benchmark
TINY_TRAINING = [  # laptop sizes of every training step (as the KFP end-to-end test)
    *("stage5.seeds=[1,2]", "walk_forward.folds=[0,1]", "universe.dollar_volume_window=60"),
    *("stage5.total_steps=256", "env.num_envs=4", "ppo.num_steps=32", "ppo.total_steps=256"),
    *("master.total_steps=128", "master.num_steps=32", "sl.max_epochs=1", "agent.warm_start_steps=10"),
    *("encoder.epochs=1", "encoder.d_model=16", "encoder.embed_dim=32", "encoder.max_bars_per_epoch=16"),
    *("encoder.branches={transformer: true, lstm: false, cnn: false, graph: false}", "encoder.scales=[1]"),
    *("encoder.probe_l2=[1.0]", "encoder.attribution_bars=2", "encoder.probe_max_samples=500"),
    "ppo.progress=false",
]


@pytest.mark.slow
def test_the_whole_dag_runs_on_hourly_bars_without_a_benchmark(tmp_path):
    """ingest .. gate through `hmarl step` in a fresh working directory, as `dvc repro` runs them."""
    sets = [
        *("data.source=path", f"data.path={write(hourly_bars(), tmp_path / 'raw' / 'bars.parquet')}"),
        *("data.calendar=XNYS", *SPLITS, *TINY_TRAINING),
        *(
            f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlruns.db",
            f"tracking.artifact_root={tmp_path}/mlartifacts",
        ),
    ]
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text("{}\n")
    calls = [["ingest"], ["validate"], ["features"], ["sl_cache"], ["pretrain_encoder"], ["train_symbols"],
             ["train_master"]]  # fmt: skip
    calls += [["stage5", "--set", f"seed={s}", "--output", f"run=reports/stage5/seed_{s}"] for s in (1, 2)]
    calls += [["walk_forward", "--set", f"ppo.fold={k}", "--output", f"evaluation=reports/walk_forward/fold_{k}"]
              for k in (0, 1)]  # fmt: skip
    calls.append(["gate"])
    for call in calls:
        args = [sys.executable, "-m", "hmarl.cli", "step", *call, "--metrics", "-"]
        done = subprocess.run(
            args + [a for s in sets for a in ("--set", s)], cwd=work, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{call[0]}: {done.stderr[-3000:]}"
    store = FeatureStore.load(work / "data" / "features")
    assert store.meta["benchmark"] is None and store.meta["market_reference"] == "equal_weight_universe"
    gate = json.loads((work / "reports" / "gate" / "gate.json").read_text())
    assert isinstance(gate["go"], bool)  # a verdict on hourly bars, annualized with the calendar's


def test_the_synthetic_market_lies_on_the_chosen_calendar(tmp_path):
    cfg = build_config({}, ["data.calendar=XNYS", "synthetic.num_symbols=4", "synthetic.num_bars=300"])
    execute("ingest", cfg, outputs={"canonical": str(tmp_path / "canonical")})
    data = read_canonical(tmp_path / "canonical")
    days = set(data.timestamps.tz_convert("America/New_York").strftime("%Y-%m-%d"))
    assert "2012-01-16" not in days and "2012-01-17" in days  # Martin Luther King Jr. Day: closed
    assert data.meta["calendar"] == "XNYS" and data.meta["bars_per_year"] == pytest.approx(252, abs=1.5)
    assert (
        validate(tmp_path, tmp_path / "canonical", "validation.max_calendar_gap_bars=0")["status"] == "passed"
    )


@pytest.mark.parametrize("bar", [0, 40])
def test_a_near_zero_print_scores_without_floating_point_warnings(bar):
    """A 1e-308 price (found by the fuzzer: its ratio to the next close overflows) is scored, not a crash
    (numpy's overflow warning is an error in this suite): mid-series it is a huge bad print."""
    from hmarl.data.bad_prints import print_scores

    close = 50.0 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 80)))
    bars = pd.DataFrame({"symbol": "S0", "open": close, "high": close, "low": close, "close": close})
    bars.loc[bar, ["open", "low"]] = 1e-308
    scores = print_scores(bars, window=60, reversion=0.7, columns=("open", "low"))
    if bar == 0:
        assert np.isnan(scores[0])  # no bar before it: not judged
    else:
        assert scores[bar] > 1000
