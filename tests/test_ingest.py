"""The ingest step: readers, frequency, universe, gap rules, benchmark/exogenous joins, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hmarl.cli import main
from hmarl.config import SyntheticConfig, build_config
from hmarl.data.canonical import META_KEY, REQUIRED_COLUMNS, pivot, read_canonical
from hmarl.data.synthetic import BUSINESS_DAYS_PER_YEAR, generate
from hmarl.errors import DataError
from hmarl.steps.runner import execute

SYMBOLS, BARS = 6, 260


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """Long raw bars (6 symbols x 260 business days) and nothing else."""
    bars, _ = generate(SyntheticConfig(num_symbols=SYMBOLS, num_bars=BARS, seed=3))
    return bars


def ingest(tmp_path, *overrides: str, name: str = "canon"):
    """Run the step on ``data.source=path`` inputs; returns (metrics, CanonicalData)."""
    cfg = build_config({}, ["data.source=path", "universe.top_n=1000", *overrides])
    out = tmp_path / name
    metrics = execute("ingest", cfg, outputs={"canonical": str(out)})
    return metrics, read_canonical(out)


def write(df: pd.DataFrame, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return str(path)


def shuffled(df: pd.DataFrame) -> pd.DataFrame:
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


# --------------------------------------------------------------------------- readers and layouts
def test_long_parquet_gives_the_canonical_contract(tmp_path, raw):
    path = write(shuffled(raw), tmp_path / "in" / "bars.parquet")  # unsorted input is fine
    metrics, data = ingest(tmp_path, f"data.path={path}")
    bars = data.bars
    assert list(bars.columns) == list(REQUIRED_COLUMNS)
    assert str(bars["symbol"].dtype) == "str" and str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert bars["tradable"].dtype == bool and bars["tradable"].all()
    expected = raw.sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(bars.drop(columns="tradable"), expected, check_dtype=False)
    meta = data.meta
    assert meta["symbols"] == sorted(raw["symbol"].unique()) and meta["num_bars"] == BARS
    assert meta["freq"] == "1D" and meta["bar_seconds"] == 86_400 and meta["bars_per_day"] == 1
    assert meta["bars_per_year"] == pytest.approx(BUSINESS_DAYS_PER_YEAR, rel=0.01)  # derived, not 252
    assert meta["start"] == "2012-01-03T14:30:00+00:00" and meta["source"]["files"] == [path]
    assert metrics["symbols"] == SYMBOLS and metrics["bars"] == BARS
    close = pivot(bars, "close")
    assert close.shape == (BARS, SYMBOLS) and close.flags.c_contiguous
    np.testing.assert_array_equal(
        close, expected.pivot(index="timestamp", columns="symbol", values="close").to_numpy()
    )
    schema_meta = json.loads(pq.read_schema(tmp_path / "canon" / "bars.parquet").metadata[META_KEY])
    assert schema_meta == meta


@pytest.mark.parametrize("layout", ["csv_naive", "glob", "folder", "wide_csv", "wide_parquet"])
def test_every_layout_gives_the_same_dataset(tmp_path, raw, layout):
    ref = write(raw, tmp_path / "ref.parquet")
    _, expected = ingest(tmp_path, f"data.path={ref}", name="ref")
    src = tmp_path / "src"
    if layout == "csv_naive":  # naive timestamp text is UTC
        naive = raw.assign(timestamp=raw["timestamp"].dt.tz_localize(None).astype("str"))
        args = [f"data.path={write(naive, src / 'bars.csv')}"]
    elif layout in ("glob", "folder"):
        mixed = shuffled(raw)
        for i, part in enumerate((mixed.iloc[: len(mixed) // 2], mixed.iloc[len(mixed) // 2 :])):
            write(part, src / (f"part{i}.parquet" if layout == "glob" else f"part{i}.csv"))
        (src / "README.md").write_text("not data")
        args = [f"data.path={src / '*.parquet'}" if layout == "glob" else f"data.path={src}"]
    else:
        ext = "csv" if layout == "wide_csv" else "parquet"
        for sym, part in raw.groupby("symbol"):
            write(part.drop(columns="symbol"), src / f"{sym}.{ext}")
        args = [f"data.path={src}", "data.layout=wide"]
    _, data = ingest(tmp_path, *args)
    assert data.meta["fingerprint"] == expected.meta["fingerprint"]
    assert data.meta["symbols"] == expected.meta["symbols"]


@pytest.mark.parametrize(("freq", "per_day", "seconds"), [("1h", 7, 3600), ("5min", 78, 300)])
def test_intraday_frequency_is_inferred(tmp_path, freq, per_day, seconds):
    bars, _ = generate(SyntheticConfig(num_symbols=3, num_bars=per_day * 60, freq=freq, seed=1))
    _, data = ingest(tmp_path, f"data.path={write(bars, tmp_path / 'bars.parquet')}")
    meta = data.meta
    assert (meta["freq"], meta["bar_seconds"], meta["bars_per_day"]) == (freq, seconds, per_day)
    assert meta["bars_per_year"] == pytest.approx(per_day * BUSINESS_DAYS_PER_YEAR, rel=0.03)


# --------------------------------------------------------------------------- bad input
def _bad_close(raw: pd.DataFrame) -> pd.DataFrame:
    df = raw.astype({"close": "object"})
    df.loc[4, "close"] = "abc"
    return df


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing_column", r"bars\.parquet: missing required column\(s\) \['volume'\]"),
        ("non_numeric", r"bars\.csv: column 'close' has a non-numeric value 'abc' at row 5, symbol 'S000'"),
        ("empty_file", r"bars\.csv: empty file"),
        ("header_only", r"bars\.csv: empty file \(no rows\)"),
        ("unreadable", r"bars\.parquet: cannot read file"),
        ("duplicate_bar", r"duplicate bar: symbol 'S002' at 2012-01-1\d 14:30:00\+00:00"),
        ("bad_timestamp", r"bars\.csv: unparseable timestamp 'not-a-date' at row 3, symbol 'S000'"),
        ("not_found", r"data\.path: file not found: .*nothing\.parquet"),
        ("glob_nothing", r"data\.path: glob .*\*\.parquet' matches no"),
        ("unknown_symbol", r"data\.symbols: unknown symbol\(s\) \['NOPE'\]"),
        ("intraday_off_grid", r"inconsistent bar frequency \(inferred 5min\): symbol 'S001' has bars at"),
        ("daily_same_date", r"inconsistent bar frequency \(inferred 1D\): symbol 'S000' has bars at"),
    ],
)
def test_bad_input_is_a_data_error_naming_the_problem(tmp_path, raw, case, match):
    d = tmp_path / "in"
    d.mkdir()
    extra = []
    if case == "missing_column":
        path = write(raw.drop(columns="volume"), d / "bars.parquet")
    elif case == "non_numeric":
        path = write(_bad_close(raw), d / "bars.csv")
    elif case == "empty_file":
        (d / "bars.csv").write_bytes(b"")
        path = str(d / "bars.csv")
    elif case == "header_only":
        path = write(raw.iloc[:0], d / "bars.csv")
    elif case == "unreadable":
        (d / "bars.parquet").write_bytes(b"PAR1 this is not parquet at all")
        path = str(d / "bars.parquet")
    elif case == "duplicate_bar":
        path = write(pd.concat([raw, raw[raw["symbol"] == "S002"].iloc[[7]]]), d / "bars.parquet")
    elif case == "bad_timestamp":
        df = raw.assign(timestamp=raw["timestamp"].astype("str"))
        df.loc[2, "timestamp"] = "not-a-date"
        path = write(df, d / "bars.csv")
    elif case == "not_found":
        path = str(d / "nothing.parquet")
    elif case == "glob_nothing":
        path = str(d / "*.parquet")
    elif case == "unknown_symbol":
        path, extra = write(raw, d / "bars.parquet"), ["data.symbols=[S000, NOPE]"]
    elif case == "intraday_off_grid":
        bars, _ = generate(SyntheticConfig(num_symbols=3, num_bars=200, freq="5min"))
        row = bars.index[bars["symbol"] == "S001"][10]
        bars.loc[row, "timestamp"] += pd.Timedelta(minutes=2)
        path = write(bars, d / "bars.parquet")
    else:  # a second daily bar on the same trading date
        extra_row = raw.iloc[[5]].assign(timestamp=raw["timestamp"].iloc[5] + pd.Timedelta(hours=1))
        path = write(pd.concat([raw, extra_row]), d / "bars.parquet")
    with pytest.raises(DataError, match=match):
        ingest(tmp_path, f"data.path={path}", *extra)
    assert not (tmp_path / "canon").exists()


def test_values_are_never_fixed(tmp_path, raw):
    df = raw.copy()
    df.loc[3, "close"] = np.nan
    df.loc[4, "open"] = -1.0
    df.loc[5, "high"] = df.loc[5, "low"] / 2  # high < low passes through for the validate step
    _, data = ingest(tmp_path, f"data.path={write(df, tmp_path / 'bars.parquet')}")
    bars = data.bars
    assert np.isnan(bars.loc[3, "close"]) and bars.loc[4, "open"] == -1.0
    assert bars.loc[5, "high"] < bars.loc[5, "low"] and bars["tradable"].all()


# --------------------------------------------------------------------------- calendar and gap rules
@pytest.fixture()
def gappy(raw) -> pd.DataFrame:
    """S000 misses 3 bars (the first among them), S001 misses 40% of them."""
    ts = np.sort(raw["timestamp"].unique())
    gone_a = raw["symbol"].eq("S000") & raw["timestamp"].isin(ts[[0, 100, 101]])
    gone_b = raw["symbol"].eq("S001") & raw["timestamp"].isin(ts[: int(0.4 * len(ts))])
    return raw[~(gone_a | gone_b)].reset_index(drop=True)


def test_gap_rule_drop_removes_every_symbol_with_gaps(tmp_path, gappy):
    _, data = ingest(
        tmp_path, f"data.path={write(gappy, tmp_path / 'bars.parquet')}", "universe.gap_rule=drop"
    )
    assert data.meta["symbols"] == ["S002", "S003", "S004", "S005"]
    dropped = data.meta["dropped_symbols"]
    assert set(dropped) == {"S000", "S001"}
    assert "missing 3 of 260 calendar bars" in dropped["S000"] and "2012-01-03" in dropped["S000"]
    assert "missing 104 of 260" in dropped["S001"]
    assert data.bars["tradable"].all() and data.meta["num_bars"] == BARS


def test_gap_rule_mask_keeps_small_gaps_as_untradable_marks(tmp_path, gappy):
    path = write(gappy, tmp_path / "bars.parquet")
    _, data = ingest(
        tmp_path, f"data.path={path}", "universe.gap_rule=mask", "universe.max_missing_fraction=0.05"
    )
    assert "S000" in data.meta["symbols"] and set(data.meta["dropped_symbols"]) == {"S001"}
    assert data.meta["masked_bars"] == 3
    bars = data.bars
    a = bars[bars["symbol"] == "S000"].reset_index(drop=True)
    masked = np.flatnonzero(~a["tradable"].to_numpy())
    assert list(masked) == [0, 100, 101]
    for col in ("open", "high", "low", "close"):
        assert a.loc[0, col] == a.loc[1, "close"]  # leading gap: the first available close
        assert (a.loc[[100, 101], col] == a.loc[99, "close"]).all()  # previous close
    assert (a.loc[masked, "volume"] == 0).all()
    # every tradable row is exactly an input row: nothing was forward-filled into tradable prices
    real = bars[bars["tradable"]].drop(columns="tradable").reset_index(drop=True)
    src = gappy[gappy["symbol"] != "S001"].sort_values(["symbol", "timestamp"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(real, src, check_dtype=False)


# --------------------------------------------------------------------------- universe
@pytest.fixture()
def liquidity(raw) -> pd.DataFrame:
    """Constant dollar volume per symbol: first half {S000: 5, S001: 4, S002: 4, S003: 1, ...}, reversed later."""
    early = {"S000": 5e6, "S001": 4e6, "S002": 4e6, "S003": 1e6, "S004": 2e6, "S005": 3e6}
    late = {"S000": 1e6, "S001": 2e6, "S002": 3e6, "S003": 9e6, "S004": 8e6, "S005": 7e6}
    cutoff = np.sort(raw["timestamp"].unique())[BARS // 2]
    dollars = np.where(raw["timestamp"] < cutoff, raw["symbol"].map(early), raw["symbol"].map(late))
    return raw.assign(volume=dollars / raw["close"])


@pytest.mark.parametrize(
    ("selection_at", "expected"), [("start", ["S000", "S001", "S002"]), ("end", ["S003", "S004", "S005"])]
)
def test_top_n_by_median_dollar_volume(tmp_path, liquidity, selection_at, expected):
    path = write(liquidity, tmp_path / "bars.parquet")
    args = [f"data.path={path}", "universe.top_n=3", "universe.dollar_volume_window=100"]
    _, data = ingest(tmp_path, *args, f"universe.selection_at={selection_at}")
    assert data.meta["symbols"] == expected
    assert data.meta["selection"]["candidates"] == SYMBOLS


def test_top_n_ties_break_by_symbol_name_and_explicit_list_overrides(tmp_path, liquidity):
    twin = liquidity["symbol"] == "S002"  # S002 trades exactly like S001: a tie
    liquidity.loc[twin, ["close", "volume"]] = liquidity.loc[
        liquidity["symbol"] == "S001", ["close", "volume"]
    ].to_numpy()
    path = write(liquidity, tmp_path / "bars.parquet")
    _, data = ingest(tmp_path, f"data.path={path}", "universe.top_n=2", "universe.dollar_volume_window=100")
    assert data.meta["symbols"] == ["S000", "S001"]  # the name decides the tie
    assert data.meta["selection"]["median_dollar_volume"]["S001"] == pytest.approx(4e6)
    _, data = ingest(tmp_path, f"data.path={path}", "data.symbols=[S004, S003]", "universe.top_n=1", name="x")
    assert data.meta["symbols"] == ["S003", "S004"] and data.meta["selection"]["method"] == "explicit"


# --------------------------------------------------------------------------- benchmark and exogenous
def _benchmark(raw: pd.DataFrame, drop: list[int], midnight: bool = False) -> pd.DataFrame:
    """A long benchmark file with the target symbol (SPY) and a distractor (QQQ)."""
    ts = pd.DatetimeIndex(np.sort(raw["timestamp"].unique()))
    if midnight:
        ts = ts.normalize()
    close = 100 + np.arange(len(ts), dtype=float)
    spy = pd.DataFrame({"symbol": "SPY", "timestamp": ts, "close": close, "volume": 1e6})
    spy = spy.drop(index=drop)
    return pd.concat([spy, spy.assign(symbol="QQQ", close=spy["close"] * 3)], ignore_index=True)


def test_benchmark_small_gaps_filled_and_daily_dates_joined(tmp_path, raw):
    data_path = write(raw, tmp_path / "bars.parquet")
    bench = write(_benchmark(raw, drop=[50, 51, 52], midnight=True), tmp_path / "spy.csv")
    _, data = ingest(tmp_path, f"data.path={data_path}", f"data.benchmark_path={bench}")
    b = data.benchmark
    assert list(b.columns) == ["timestamp", "close", "volume"] and len(b) == BARS
    assert (b["timestamp"] == data.timestamps).all()
    assert (b.loc[50:52, "close"] == 149.0).all() and (b.loc[50:52, "volume"] == 0).all()
    assert b.loc[53, "close"] == 153.0 and b.loc[0, "close"] == 100.0
    meta = data.meta
    assert meta["benchmark_symbol"] == "SPY" and meta["benchmark_source"] == "file"
    assert meta["benchmark_filled_bars"] == 3


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        (list(range(50, 54)), "4 consecutive bars missing from 2012-03-1"),
        ([0, 1], "no value for its first bar"),
    ],
)
def test_benchmark_not_covering_the_calendar_is_an_error(tmp_path, raw, drop, match):
    data_path = write(raw, tmp_path / "bars.parquet")
    bench = write(_benchmark(raw, drop=drop), tmp_path / "spy.parquet")
    with pytest.raises(DataError, match=f"benchmark SPY does not cover the calendar: .*{match}"):
        ingest(tmp_path, f"data.path={data_path}", f"data.benchmark_path={bench}")


def test_a_longer_benchmark_hole_names_the_option_and_fills_when_raised(tmp_path, raw):
    data_path = write(raw, tmp_path / "bars.parquet")
    bench = write(_benchmark(raw, drop=list(range(50, 54))), tmp_path / "spy.parquet")
    with pytest.raises(DataError, match=r"at most data.max_fill_bars=3 are filled forward; raise it"):
        ingest(tmp_path, f"data.path={data_path}", f"data.benchmark_path={bench}")
    _, data = ingest(
        tmp_path, f"data.path={data_path}", f"data.benchmark_path={bench}", "data.max_fill_bars=4"
    )
    assert data.meta["benchmark_filled_bars"] == 4 and data.meta["max_fill_bars"] == 4
    close = data.benchmark["close"].to_numpy()
    assert (close[50:54] == close[49]).all()  # carried forward, never interpolated


def test_without_benchmark_none_is_made_up(tmp_path, raw):
    _, data = ingest(tmp_path, f"data.path={write(raw, tmp_path / 'bars.parquet')}")
    assert data.benchmark is None and not (tmp_path / "canon" / "benchmark.parquet").exists()
    assert data.meta["benchmark"] is None and data.meta["benchmark_source"] == "none"
    assert len(data.timestamps) == data.meta["num_bars"]


def test_exogenous_series_join_as_of_backward(tmp_path, raw):
    ts = pd.DatetimeIndex(np.sort(raw["timestamp"].unique()))
    # value i is stamped 1 h before bar i (known in time) for even i, 1 h after bar i for odd i
    stamps = ts + pd.to_timedelta(np.where(np.arange(BARS) % 2 == 0, -1, 1), unit="h")
    exo = pd.DataFrame(
        {"timestamp": stamps.tz_localize(None), "close": np.arange(BARS, dtype=float), "note": "x"}
    )
    exo_path = write(shuffled(exo), tmp_path / "vix.csv")
    args = [
        f"data.path={write(raw, tmp_path / 'bars.parquet')}",
        f"data.exogenous=[{{name: vix, path: {exo_path}}}]",
    ]
    _, data = ingest(tmp_path, *args)
    got = data.exogenous
    assert list(got.columns) == ["timestamp", "vix__close"]
    assert data.meta["exogenous_columns"] == ["vix__close"]
    assert (got["timestamp"] == data.timestamps).all()
    value = got["vix__close"].to_numpy()
    even = np.arange(0, BARS, 2)
    np.testing.assert_array_equal(value[even], even)  # known before the bar
    np.testing.assert_array_equal(value[even[1:] - 1], even[1:] - 2)  # odd bars: their own value is later


@pytest.mark.parametrize(
    ("frame", "columns", "match"),
    [
        (
            pd.DataFrame({"when": ["2012-01-03"], "close": [1.0]}),
            "[close]",
            r"missing required column\(s\) \['timestamp'\]",
        ),
        (
            pd.DataFrame({"timestamp": ["2012-01-03", "2012-01-04"], "close": ["1", "high"]}),
            "[close]",
            "non-numeric value 'high'",
        ),
        (
            pd.DataFrame({"timestamp": ["2012-01-03", "2012-01-03"], "close": [1.0, 2.0]}),
            "[close]",
            "duplicate timestamp",
        ),
        (
            pd.DataFrame({"timestamp": ["2012-01-03"], "close": [1.0]}),
            "[level]",
            r"missing required column\(s\) \['level'\]",
        ),
    ],
)
def test_bad_exogenous_series_is_a_data_error(tmp_path, raw, frame, columns, match):
    exo_path = write(frame, tmp_path / "exo.csv")
    args = [f"data.path={write(raw, tmp_path / 'bars.parquet')}"]
    with pytest.raises(DataError, match=rf"data\.exogenous\[rates\].*{match}"):
        ingest(tmp_path, *args, f"data.exogenous=[{{name: rates, path: {exo_path}, columns: {columns}}}]")


# --------------------------------------------------------------------------- step, CLI, canonical IO
def test_default_synthetic_step_is_deterministic(tmp_path):
    cfg = build_config({"universe": {"top_n": 10}, "synthetic": {"num_symbols": 14, "num_bars": 300}})
    a = execute("ingest", cfg, outputs={"canonical": str(tmp_path / "a")})
    execute("ingest", cfg, outputs={"canonical": str(tmp_path / "b")})
    ma, mb = read_canonical(tmp_path / "a").meta, read_canonical(tmp_path / "b").meta
    assert ma["fingerprint"] == mb["fingerprint"] and a["symbols"] == 10 and a["candidates"] == 14
    assert ma["source"]["kind"] == "synthetic" and ma["source"]["mode"] == "planted_alpha"
    assert ma["benchmark_source"] == "synthetic_equal_weight" and ma["benchmark_symbol"] == "SPY"


def test_cli_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("profile: smoke\n")
    out = tmp_path / "out" / "canonical"
    out.parent.mkdir()
    missing = tmp_path / "missing.parquet"
    args = ["--set", "data.source=path", "--set", f"data.path={missing}", "--output", f"canonical={out}"]
    rc = main(["step", "ingest", "--params", str(params), *args, "--metrics", "-"])
    assert rc == 2
    assert "file not found" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # no output and no temp folder left behind


def test_read_canonical_detects_tampering(tmp_path, raw):
    _, data = ingest(tmp_path, f"data.path={write(raw, tmp_path / 'bars.parquet')}")
    bars = data.bars.copy()
    bars.loc[10, "close"] *= 1.01
    bars.to_parquet(tmp_path / "canon" / "bars.parquet", index=False)
    with pytest.raises(DataError, match="does not match the fingerprint"):
        read_canonical(tmp_path / "canon")
    with pytest.raises(DataError, match="not a full"):
        pivot(data.bars.iloc[1:], "close")
