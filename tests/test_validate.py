"""The validate step: a Great Expectations suite over the canonical dataset.

Each bad input must fail with a DataError that names the failed expectation and an example row, leave
no step output behind, and keep a human-readable report in ``<report>.failed/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hmarl import cli
from hmarl.config import build_config
from hmarl.data.expectations import missing_bars, validate_canonical
from hmarl.errors import DataError
from hmarl.steps.runner import execute

SYMBOLS = ("AAA", "BBB", "CCC")
NUM_DAYS = 130  # > validation.min_bars_per_symbol (100)
HOLIDAY = 40  # a weekday dropped from the calendar, as exchanges do: not a gap


@dataclass
class Dataset:
    """A canonical folder's content; ``write`` derives meta.json from the frames like ingest does."""

    bars: pd.DataFrame
    benchmark: pd.DataFrame
    exogenous: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)  # overrides of the derived meta

    def copy(self) -> Dataset:
        exo = None if self.exogenous is None else self.exogenous.copy()
        return replace(self, bars=self.bars.copy(), benchmark=self.benchmark.copy(), exogenous=exo)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        self.bars.to_parquet(folder / "bars.parquet", index=False)
        self.benchmark.to_parquet(folder / "benchmark.parquet", index=False)
        if self.exogenous is not None:
            self.exogenous.to_parquet(folder / "exogenous.parquet", index=False)
        calendar = pd.DatetimeIndex(self.bars["timestamp"].dropna().unique()).sort_values()
        meta = {
            "symbols": sorted(self.bars["symbol"].dropna().unique().tolist()),
            "freq": "1D", "bar_seconds": 86400, "bars_per_day": 1, "bars_per_year": 252.0,
            "num_bars": len(calendar), "session_tz": "America/New_York", "fingerprint": "test-fingerprint",
            "start": calendar[0].isoformat() if len(calendar) else None,
            "end": calendar[-1].isoformat() if len(calendar) else None,
            **self.meta,
        }  # fmt: skip
        (folder / "meta.json").write_text(json.dumps(meta))
        return folder


def session_opens(days: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """09:30 New York of each day, in UTC (13:30 or 14:30 depending on DST), like the real data."""
    return (days + pd.Timedelta(hours=9, minutes=30)).tz_localize("America/New_York").tz_convert("UTC")


def good_dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2020-01-02", periods=NUM_DAYS + 1)
    calendar = session_opens(days.delete(HOLIDAY))
    frames = []
    for i, symbol in enumerate(SYMBOLS):
        close = 50.0 * (i + 1) * np.exp(np.cumsum(rng.normal(0, 0.02, NUM_DAYS)))
        open_ = np.r_[close[0], close[:-1]] * np.exp(rng.normal(0, 0.005, NUM_DAYS))
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, NUM_DAYS))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, NUM_DAYS))
        volume = rng.uniform(1e5, 1e6, NUM_DAYS)
        tradable = np.ones(NUM_DAYS, dtype=bool)
        if symbol == "BBB":  # a masked gap, filled the way ingest fills it
            gap = slice(60, 63)
            tradable[gap] = False
            open_[gap] = high[gap] = low[gap] = close[gap] = close[59]
            volume[gap] = 0.0
        frames.append(pd.DataFrame({
            "symbol": pd.array([symbol] * NUM_DAYS, dtype="str"), "timestamp": calendar,
            "open": open_, "high": high, "low": low, "close": close, "volume": volume, "tradable": tradable,
        }))  # fmt: skip
    bars = pd.concat(frames, ignore_index=True)
    benchmark = pd.DataFrame(
        {"timestamp": calendar, "close": 300 * np.exp(np.cumsum(rng.normal(0, 0.01, NUM_DAYS)))}
    )
    vix = rng.uniform(10, 40, NUM_DAYS)
    vix[:3] = np.nan  # the as-of join leaves bars before the series' first value NaN
    exogenous = pd.DataFrame({"timestamp": calendar, "vix__close": vix})
    return Dataset(bars, benchmark, exogenous)


def row_text(bars: pd.DataFrame, row: int) -> str:
    """How an example row must be named: its symbol and timestamp."""
    return f"symbol={bars.at[row, 'symbol']} timestamp={bars.at[row, 'timestamp'].isoformat()}"


def cfg_with(*overrides: str):
    return build_config({}, list(overrides))


def run_step(tmp_path: Path, data: Dataset, *overrides: str) -> tuple[Path, dict]:
    """Run the step through the real runner (temp outputs, rename on success)."""
    folder = data.write(tmp_path / "canonical")
    report = tmp_path / "reports" / "validate"
    metrics = execute("validate", cfg_with(*overrides), {"canonical": str(folder)}, {"report": str(report)})
    return report, metrics


def expect_failure(tmp_path: Path, data: Dataset, *overrides: str) -> tuple[str, dict]:
    """The step fails: returns the error message and the kept failure summary."""
    with pytest.raises(DataError) as info:
        run_step(tmp_path, data, *overrides)
    report = tmp_path / "reports" / "validate"
    failed = tmp_path / "reports" / "validate.failed"
    message = str(info.value)
    assert not report.exists(), "a failed validation must leave no output"
    assert (failed / "report.html").is_file() and str(failed / "report.html") in message
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["expectations_failed"] == len(summary["failed"]) >= 1
    return message, summary


@pytest.fixture(scope="module")
def good() -> Dataset:
    return good_dataset()


@pytest.fixture(scope="module")
def good_run(good, tmp_path_factory) -> dict:
    """One CLI run on the good dataset, with a stale failure report lying around from an earlier run."""
    tmp = tmp_path_factory.mktemp("good")
    folder = good.write(tmp / "canonical")
    (tmp / "params.yaml").write_text("{}\n")
    stale = tmp / "reports" / "validate.failed"
    stale.mkdir(parents=True)
    (stale / "report.html").write_text("old failure")
    report, metrics = tmp / "reports" / "validate", tmp / "metrics" / "validate.json"
    rc = cli.main([
        "step", "validate", "--params", str(tmp / "params.yaml"), "--input", f"canonical={folder}",
        "--output", f"report={report}", "--metrics", str(metrics),
    ])  # fmt: skip
    return {"rc": rc, "tmp": tmp}


# --------------------------------------------------------------------------- a good dataset passes
def test_good_dataset_passes_and_writes_the_report(good_run, good):
    tmp = good_run["tmp"]
    assert good_run["rc"] == 0
    report = tmp / "reports" / "validate"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["status"] == "passed" and summary["failed"] == []
    assert summary["rows"] == len(good.bars) and summary["symbols"] == len(SYMBOLS)
    assert summary["fingerprint"] == "test-fingerprint"
    ids = {r["id"] for r in summary["results"]}
    assert {
        "schema (close)", "not_null (close)", "prices_positive (close)", "high_is_max (high >= close)",
        "low_is_min (low <= open)", "volume_non_negative (volume)", "unique_bars (symbol, timestamp)",
        "timestamps_sorted (timestamp)", "masked_bars_flat (tradable=False)",
        "common_calendar (bars == calendar_bars)", "calendar_gaps (gap <= 5 bars)",
        "benchmark_covers_calendar (timestamp)", "exogenous_finite (vix__close)",
        "exogenous_no_late_nan (vix__close)",
    } <= ids  # fmt: skip
    assert summary["expectations_total"] == len(summary["results"])
    ge = [r for r in summary["results"] if r["engine"] == "great_expectations"]
    assert len(ge) > 20  # the value rules really ran through GE
    html = (report / "report.html").read_text()
    assert "PASSED" in html and "prices_positive (close)" in html
    assert "<script" not in html and "<link" not in html and "http" not in html  # self-contained
    assert not (tmp / "reports" / "validate.failed").exists(), "a passing run removes a stale failure report"
    metrics = json.loads((tmp / "metrics" / "validate.json").read_text())
    assert metrics["success"] == 1.0 and metrics["expectations_failed"] == 0.0
    assert metrics["expectations_total"] == summary["expectations_total"]
    assert (
        metrics["rows"] == len(good.bars) and metrics["symbols"] == len(SYMBOLS) and metrics["outliers"] == 0
    )
    assert 0 < metrics["seconds"] < 30


def test_the_report_is_deterministic(good_run, tmp_path):
    report, _ = run_step(tmp_path, good_dataset())
    first = good_run["tmp"] / "reports" / "validate"
    for name in ("summary.json", "report.html"):
        a = (first / name).read_text().replace(str(good_run["tmp"]), "<tmp>")
        b = (report / name).read_text().replace(str(tmp_path), "<tmp>")
        assert a == b


# --------------------------------------------------------------------------- bad inputs
def test_missing_column(tmp_path, good):
    data = good.copy()
    data.bars = data.bars.drop(columns="volume")
    message, summary = expect_failure(tmp_path, data)
    assert "schema (volume)" in message and "no column 'volume'" in message
    assert "schema (volume)" in summary["failed"]


def test_close_stored_as_string(tmp_path, good):
    data = good.copy()
    close = data.bars["close"].astype(str)
    close[7] = "n/a"
    data.bars["close"] = close
    message, _ = expect_failure(tmp_path, data)
    assert "schema (close)" in message and "expected float64" in message
    assert f"{row_text(data.bars, 7)} close=n/a (row 7)" in message


def test_nan_fails_with_exit_code_2(tmp_path, good, capsys):
    data = good.copy()
    data.bars.loc[150, "close"] = np.nan
    folder = data.write(tmp_path / "canonical")
    (tmp_path / "params.yaml").write_text("{}\n")
    report = tmp_path / "reports" / "validate"
    rc = cli.main([
        "step", "validate", "--params", str(tmp_path / "params.yaml"), "--input", f"canonical={folder}",
        "--output", f"report={report}", "--metrics", str(tmp_path / "metrics.json"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"not_null (close): 1 row with close null, e.g. {row_text(data.bars, 150)}" in err
    assert "(row 150)" in err
    assert not report.exists() and not (tmp_path / "metrics.json").exists()
    assert (tmp_path / "reports" / "validate.failed" / "report.html").is_file()


@pytest.mark.parametrize("column, value", [("close", 0.0), ("open", -1.5)])
def test_non_positive_price(tmp_path, good, column, value):
    data = good.copy()
    data.bars.loc[33, column] = value
    data.bars.loc[33, "low"] = min(value, data.bars.at[33, "low"])  # keep the bar consistent otherwise
    message, _ = expect_failure(tmp_path, data)
    assert f"prices_positive ({column}): 1 row with {column} <= 0 or infinite" in message
    assert f"{row_text(data.bars, 33)} {column}={value}" in message and "(row 33)" in message


def test_ohlc_inconsistency(tmp_path, good):
    data = good.copy()
    data.bars.loc[5, "high"] = data.bars.at[5, "close"] * 0.99
    data.bars.loc[200, "low"] = data.bars.at[200, "open"] * 1.01
    message, summary = expect_failure(tmp_path, data)
    assert f"high_is_max (high >= close): 1 row with high < close, e.g. {row_text(data.bars, 5)}" in message
    assert f"low_is_min (low <= open): 1 row with low > open, e.g. {row_text(data.bars, 200)}" in message
    assert {"high_is_max (high >= close)", "low_is_min (low <= open)"} <= set(summary["failed"])


def test_duplicate_bar(tmp_path, good):
    data = good.copy()
    bars = data.bars
    data.bars = pd.concat([bars.iloc[:11], bars.iloc[10:11], bars.iloc[11:]], ignore_index=True)
    message, _ = expect_failure(tmp_path, data)
    assert "unique_bars (symbol, timestamp): 2 rows sharing their (symbol, timestamp)" in message
    assert f"{row_text(data.bars, 10)} (row 10); {row_text(data.bars, 11)} (row 11)" in message


def test_unsorted_timestamps(tmp_path, good):
    data = good.copy()
    order = np.arange(len(data.bars))
    order[[20, 21]] = [21, 20]
    data.bars = data.bars.iloc[order].reset_index(drop=True)
    message, summary = expect_failure(tmp_path, data)
    assert "timestamps_sorted (timestamp): 1 row earlier than the previous row of the same symbol" in message
    assert f"{row_text(data.bars, 21)} prev_timestamp=" in message and "(row 21)" in message
    assert summary["failed"] == ["timestamps_sorted (timestamp)"]


def test_symbol_blocks_out_of_order(tmp_path, good):
    data = good.copy()
    data.bars = data.bars.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    message, summary = expect_failure(tmp_path, data)
    assert "symbols_sorted (symbol): 129 rows whose symbol sorts before the previous row's" in message
    assert f"{row_text(data.bars, 3)} prev_symbol=CCC (row 3)" in message
    assert summary["failed"] == ["symbols_sorted (symbol)"]


def test_calendar_gap(tmp_path, good):
    data = good.copy()
    calendar = data.benchmark["timestamp"]
    hole = calendar.iloc[70:78]  # 8 trading days missing for every symbol (default limit: 5)
    data.bars = data.bars[~data.bars["timestamp"].isin(hole)].reset_index(drop=True)
    data.benchmark = data.benchmark[~calendar.isin(hole)].reset_index(drop=True)
    data.exogenous = None
    message, summary = expect_failure(tmp_path, data)
    after = calendar.iloc[78].isoformat()
    assert (
        "calendar_gaps (gap <= 5 bars): 1 calendar timestamp with more than 5 expected bars missing"
        in message
    )
    assert f"timestamp={after} previous={calendar.iloc[69].isoformat()} gap_bars=8.0" in message
    assert summary["failed"] == ["calendar_gaps (gap <= 5 bars)"]


def test_missing_bars_counts_trading_bars_not_calendar_time():
    days = session_opens(pd.DatetimeIndex(["2021-04-01", "2021-04-05", "2021-04-06", "2021-04-12"]))
    # Thu -> Mon over Good Friday: one trading day; Mon -> Tue: none; Tue -> next Mon: 3 (Wed-Fri)
    assert missing_bars(days, 86400, 1, 252, "America/New_York")[1:].tolist() == [1.0, 0.0, 3.0]
    # hourly session bars: the overnight break is no gap, a skipped hour and a skipped day are
    hours = pd.DatetimeIndex(
        ["2021-04-05 14:00", "2021-04-05 15:00", "2021-04-05 17:00", "2021-04-06 14:00", "2021-04-08 14:00"],
        tz="UTC",
    )
    assert missing_bars(hours, 3600, 7, 7 * 252, "America/New_York")[1:].tolist() == [0.0, 1.0, 0.0, 7.0]
    # a market trading every day: a weekend is a gap
    crypto = pd.DatetimeIndex(["2021-04-02", "2021-04-05"], tz="UTC")
    assert missing_bars(crypto, 86400, 1, 365, "UTC")[1:].tolist() == [2.0]


def spiked(good: Dataset, rows: list[int]) -> Dataset:
    """Prices x3 on ``rows``: each spike makes two returns beyond +-50 % (+200 %, then -67 %)."""
    data = good.copy()
    data.bars.loc[rows, ["open", "high", "low", "close"]] *= 3.0
    return data


def test_outlier_fraction_exceeded(tmp_path, good):
    data = spiked(good, [30, 290])  # 4 outliers of 387 returns > 0.1 %
    message, summary = expect_failure(tmp_path, data)
    assert "return_outliers (|return| <= 0.5): 4 rows with |close-to-close return| > 0.5" in message
    assert f"{row_text(data.bars, 30)} close=" in message and "(row 30)" in message
    assert summary["outlier_count"] == 4


def test_outliers_below_the_fraction_pass_and_are_listed(tmp_path, good):
    data = spiked(good, [30, 290])  # one-bar spikes that revert: bad prints unless allow-listed
    allow = [{"symbol": data.bars.at[i, "symbol"], "timestamp": data.bars.at[i, "timestamp"].isoformat()}
             for i in (30, 290)]  # fmt: skip
    allow_list = "validation.allow_bad_prints=" + json.dumps(allow)
    report, metrics = run_step(tmp_path, data, "validation.max_outlier_fraction=0.02", allow_list)
    summary = json.loads((report / "summary.json").read_text())
    assert summary["status"] == "passed" and metrics["outliers"] == 4
    close = data.bars["close"]
    ret = close / close.groupby(data.bars["symbol"]).shift(1) - 1
    expected = sorted(np.flatnonzero((ret.abs() > 0.5).to_numpy()).tolist())
    assert [o["row"] for o in summary["outliers"]] == expected == [30, 31, 290, 291]
    first = summary["outliers"][0]
    assert first["symbol"] == "AAA" and first["timestamp"] == data.bars.at[30, "timestamp"].isoformat()
    assert first["return"] == pytest.approx(ret[30])
    assert "Return outliers (4)" in (report / "report.html").read_text()
    assert [a["symbol"] for a in summary["data"]["allowed_bad_prints"]] == ["AAA", "CCC"]


def test_empty_dataset(tmp_path, good):
    data = good.copy()
    data.bars = data.bars.iloc[:0]
    data.meta = {"num_bars": 1}  # meta alone cannot hide the emptiness
    message, summary = expect_failure(tmp_path, data)
    assert "bars_not_empty: bars.parquet has 0 rows" in message
    assert "bars_not_empty" in summary["failed"] and summary["rows"] == 0
    assert not any(f.startswith("not_null") for f in summary["failed"])  # no phantom rows appeared


def test_corrupt_bars_parquet(tmp_path, good):
    folder = good.write(tmp_path / "canonical")
    (folder / "bars.parquet").write_bytes(b"PAR1 this is not parquet")
    report = tmp_path / "reports" / "validate"
    with pytest.raises(DataError, match=r"bars_readable: cannot read .*bars\.parquet"):
        execute("validate", cfg_with(), {"canonical": str(folder)}, {"report": str(report)})
    assert not report.exists() and (tmp_path / "reports" / "validate.failed" / "summary.json").is_file()


def test_benchmark_misaligned(tmp_path, good):
    data = good.copy()
    moved = data.benchmark.at[50, "timestamp"]
    data.benchmark.loc[50, "timestamp"] = moved + pd.Timedelta(hours=1)
    message, summary = expect_failure(tmp_path, data)
    on_calendar = (
        "benchmark_on_calendar (timestamp): 1 benchmark row whose timestamp is not on the bars calendar, "
        f"e.g. timestamp={(moved + pd.Timedelta(hours=1)).isoformat()} (row 50)"
    )
    covers = (
        "benchmark_covers_calendar (timestamp): 1 calendar timestamp missing from benchmark.parquet, "
        f"e.g. timestamp={moved.isoformat()} (calendar bar 50)"
    )
    assert on_calendar in message and covers in message
    assert set(summary["failed"]) == {
        "benchmark_on_calendar (timestamp)",
        "benchmark_covers_calendar (timestamp)",
    }


def test_symbol_off_the_common_calendar(tmp_path, good):
    data = good.copy()
    data.bars = data.bars.drop(index=[NUM_DAYS + 12]).reset_index(drop=True)  # BBB loses one bar
    message, _ = expect_failure(tmp_path, data)
    first_missing = good.bars.at[NUM_DAYS + 12, "timestamp"].isoformat()
    assert (
        f"common_calendar (bars == calendar_bars): 1 symbol missing calendar timestamps, e.g. symbol=BBB "
        f"bars={NUM_DAYS - 1} calendar_bars={NUM_DAYS} first_missing={first_missing}"
    ) in message


def test_too_few_bars_per_symbol(tmp_path, good):
    message, _ = expect_failure(tmp_path, good, "validation.min_bars_per_symbol=200")
    assert (
        f"bars_per_symbol_min (bars): 3 symbols with fewer than 200 bars, e.g. symbol=AAA bars={NUM_DAYS}"
        in message
    )


def test_masked_bar_that_is_not_flat(tmp_path, good):
    data = good.copy()
    row = NUM_DAYS + 61  # inside BBB's masked gap
    data.bars.loc[row, "volume"] = 500.0
    message, _ = expect_failure(tmp_path, data)
    assert "masked_bars_flat (tradable=False): 1 row masked (tradable=False) but not flat" in message
    assert f"{row_text(data.bars, row)} " in message and "volume=500.0 prev_close=" in message


def test_bad_exogenous_values(tmp_path, good):
    data = good.copy()
    data.exogenous.loc[90, "vix__close"] = np.inf
    data.exogenous.loc[100, "vix__close"] = np.nan  # after the first value: not the join's leading NaN
    message, summary = expect_failure(tmp_path, data)
    ts = data.exogenous["timestamp"]
    finite = (
        "exogenous_finite (vix__close): 1 exogenous row with vix__close = +-inf, "
        f"e.g. timestamp={ts[90].isoformat()} vix__close=inf (row 90)"
    )
    late_nan = (
        "exogenous_no_late_nan (vix__close): 1 exogenous row with vix__close NaN after its first value, "
        f"e.g. timestamp={ts[100].isoformat()} vix__close=NaN (row 100)"
    )
    assert finite in message and late_nan in message
    assert set(summary["failed"]) == {"exogenous_finite (vix__close)", "exogenous_no_late_nan (vix__close)"}


def test_great_expectations_is_imported_lazily():
    code = "import sys, hmarl.cli, hmarl.steps.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- the real data set
def test_real_data_passes_with_defaults_and_lists_its_outliers(shared_data, tmp_path):
    bars = pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021.parquet")
    bars["tradable"] = True
    bench = pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021_benchmark.parquet")
    data = Dataset(bars, bench.drop(columns="symbol"), meta={"bars_per_year": 252.0})
    folder = data.write(tmp_path / "canonical")
    outcome = validate_canonical(folder, cfg_with().validation)
    assert outcome.success, [c.message() for c in outcome.failed]
    assert (outcome.rows, outcome.symbols, outcome.calendar_bars) == (615_450, 150, 4_103)
    ret = bars["close"] / bars.groupby("symbol")["close"].shift(1) - 1
    beyond = bars.loc[ret.abs() > 0.5, ["symbol", "timestamp"]]
    expected = {(s, t.isoformat()) for s, t in zip(beyond["symbol"], beyond["timestamp"], strict=True)}
    assert {(o["symbol"], o["timestamp"]) for o in outcome.outliers} == expected
    assert ("MS", "2008-10-13T13:30:00+00:00") in expected  # MS +87 %, named in the data's README
