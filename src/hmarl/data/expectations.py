"""The canonical dataset's expectation suite, run with Great Expectations 1.x.

Every check becomes one :class:`~hmarl.data.validation_report.CheckResult`, whichever engine ran it:

- files, schema and ``meta.json`` are checked in pandas (GE's type expectations are unreliable on
  pandas-3 dtypes, and a table whose schema is wrong cannot be value-checked at all);
- value rules are GE expectations on five frames: ``bars``, ``benchmark``, ``exogenous`` and two
  derived ones, ``symbols`` (one row per symbol) and ``calendar`` (one row per distinct timestamp).
  Helper columns (``_return``, ``_ts_step``, ``_gap_bars``, ...) turn per-symbol and calendar rules
  into plain column rules, so GE reports the offending rows by position.

Great Expectations costs 3-5 s to import, so it is imported only inside :func:`run_rules`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from hmarl.config import ValidationConfig
from hmarl.data.validation_report import TABLES, CheckResult, Outcome, example_row, plain

PRICES = ("open", "high", "low", "close")
MAX_EXAMPLES = 5  # example rows kept per check (the outlier list is always complete)
MASKED_TOLERANCE = 1e-9  # relative: a masked bar repeats the previous close exactly
# relative slack for high/low against open/close: adjusted prices carry float rounding (the real
# SPY benchmark has highs one ulp below the close)
PRICE_TOLERANCE = 1e-9

# column -> dtype kind (see _dtype_ok); dict order is the report's order
BARS_SCHEMA = {
    "symbol": "string",
    "timestamp": "utc_datetime",
    **dict.fromkeys((*PRICES, "volume"), "float64"),
    "tradable": "bool",
}
BENCHMARK_SCHEMA = {"timestamp": "utc_datetime", "close": "float64"}
BENCHMARK_OPTIONAL = dict.fromkeys(("open", "high", "low", "volume"), "float64")
META_NUMBERS = ("bar_seconds", "bars_per_day", "bars_per_year", "num_bars")
META_KEYS = ("freq", "start", "end", "fingerprint")
_KIND_NAMES = {"utc_datetime": "datetime64[UTC]", "numeric": "a numeric dtype"}


@dataclass(frozen=True)
class Rule:
    """A value rule: one GE expectation plus the words that explain its failures."""

    name: str
    table: str  # key of TABLES
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict
    target: str
    description: str
    problem: str  # follows the count: "3 rows" + " with close <= 0"
    show: tuple[str, ...] = ()  # columns printed with each example besides the table keys

    @property
    def check_id(self) -> str:
        return f"{self.name} ({self.target})" if self.target else self.name


# --------------------------------------------------------------------------- files, schema, meta
def _dtype_ok(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if kind == "string":
        return isinstance(dtype, pd.StringDtype) or (
            pd.api.types.is_object_dtype(dtype)
            and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")
        )
    if kind == "utc_datetime":
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"
    if kind == "float64":
        return dtype == np.float64
    if kind == "bool":
        return dtype == np.bool_
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)  # numeric


def _first_bad_value(series: pd.Series, kind: str) -> int:
    """Position of the first value that does not fit ``kind`` (row 0 when they all convert)."""
    if kind in ("float64", "numeric"):
        bad = (pd.to_numeric(series, errors="coerce").isna() & series.notna()).to_numpy()
        if bad.any():
            return int(np.flatnonzero(bad)[0])
    return 0


def _schema_checks(
    frame: pd.DataFrame, table: str, schema: dict[str, str], required: bool
) -> list[CheckResult]:
    """One check per expected column: present (when required) and of the contract's dtype."""
    file = TABLES[table].file
    checks = []
    for col, kind in schema.items():
        if col not in frame.columns and not required:
            continue
        want = _KIND_NAMES.get(kind, kind)
        name = "schema" if table == "bars" else f"{table}_schema"
        check = CheckResult(name, table, col, f"{file} has column {col} of dtype {want}")
        if col not in frame.columns:
            check.success, check.observed = False, "missing"
            check.problem = f"{file} has no column {col!r} (columns: {', '.join(map(str, frame.columns))})"
        else:
            check.observed = str(frame[col].dtype)
            if not _dtype_ok(frame[col], kind):
                check.success = False
                check.problem = f"column {col} has dtype {frame[col].dtype}, expected {want}"
                if len(frame):
                    check.examples = [example_row(frame, table, _first_bad_value(frame[col], kind), (col,))]
        checks.append(check)
    return checks


def _read_parquet(folder: Path, table: str, checks: list[CheckResult]) -> pd.DataFrame | None:
    path = folder / TABLES[table].file
    check = CheckResult(f"{table}_readable", table, "", f"{path.name} exists and is readable Parquet")
    checks.append(check)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # whatever the reader's complaint, it is bad input to report
        check.success, check.problem = False, f"cannot read {path}: {type(exc).__name__}: {exc}"
        return None
    check.observed = f"{len(frame):,} rows"
    return frame.reset_index(drop=True)  # GE reports index labels: make them file row positions


def _read_meta(folder: Path, checks: list[CheckResult]) -> dict | None:
    path = folder / "meta.json"
    check = CheckResult("meta_fields", "meta", "", "meta.json is readable and has the contract's fields")
    checks.append(check)
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("the top level is not an object")
    except Exception as exc:  # missing file or bad JSON: bad input to report
        check.success, check.problem = False, f"cannot read {path}: {type(exc).__name__}: {exc}"
        return None
    problems = []
    if not (isinstance(meta.get("symbols"), list) and all(isinstance(s, str) for s in meta["symbols"])):
        problems.append(f"symbols must be a list of strings (got {str(meta.get('symbols'))[:60]})")
    for key in META_NUMBERS:
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.append(f"{key} must be a positive number (got {value!r})")
    problems += [f"{key} is missing" for key in META_KEYS if key not in meta]
    try:
        ZoneInfo(meta.get("session_tz", "UTC"))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        problems.append(f"session_tz {meta['session_tz']!r} is not a known time zone")
    check.observed = f"{len(meta)} fields"
    if problems:
        check.success, check.problem = False, "; ".join(problems)
    return meta


def load_inputs(folder: Path) -> tuple[dict[str, pd.DataFrame], dict | None, list[CheckResult], list[str]]:
    """Read the canonical folder; a frame whose file or schema is broken is left out (and reported)."""
    checks: list[CheckResult] = []
    notes: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    for table, schema in (("bars", BARS_SCHEMA), ("benchmark", BENCHMARK_SCHEMA), ("exogenous", {})):
        if table == "exogenous" and not (folder / TABLES[table].file).exists():
            notes.append("exogenous.parquet is absent (it is optional): no exogenous checks")
            continue
        frame = _read_parquet(folder, table, checks)
        if frame is None:
            continue
        if table == "exogenous":
            schema = {"timestamp": "utc_datetime"}
            optional = {c: "numeric" for c in frame.columns if c != "timestamp"}
        else:
            optional = BENCHMARK_OPTIONAL if table == "benchmark" else {}
        table_checks = _schema_checks(frame, table, schema, True) + _schema_checks(
            frame, table, optional, False
        )
        checks += table_checks
        if all(c.success for c in table_checks):
            frames[table] = frame
        else:
            notes.append(f"value rules on {TABLES[table].file} were not run: its schema is wrong")
    return frames, _read_meta(folder, checks), checks, notes


def meta_matches_bars(meta: dict, bars: pd.DataFrame, calendar: pd.DatetimeIndex) -> CheckResult:
    check = CheckResult(
        "meta_matches_bars", "meta", "", "meta.json symbols and num_bars describe bars.parquet"
    )
    listed, present = set(meta["symbols"]), set(bars["symbol"].dropna().unique().tolist())
    problems = []
    if listed != present:
        problems.append(
            f"symbols differ: only in meta.json {sorted(listed - present)[:5]}, "
            f"only in bars.parquet {sorted(present - listed)[:5]}"
        )
    if int(meta["num_bars"]) != len(calendar):
        problems.append(f"num_bars is {meta['num_bars']} but bars.parquet has {len(calendar)} timestamps")
    check.observed = f"{len(present)} symbols, {len(calendar)} timestamps"
    if problems:
        check.success, check.problem = False, "; ".join(problems)
    return check


# --------------------------------------------------------------------------- derived frames
def missing_bars(
    calendar: pd.DatetimeIndex, bar_seconds: float, bars_per_day: float, bars_per_year: float, tz: str
) -> np.ndarray:
    """Expected bars missing before each calendar timestamp (NaN for the first).

    Trading dates are local dates in ``tz`` (meta ``session_tz``). One bar a day: skipped trading
    days (Mon-Fri, or every day for markets with 360+ trading days a year), so a weekend is no gap
    and a holiday counts 1. Intraday sessions: skipped bar steps within a date and skipped trading
    days x bars_per_day between dates, so the overnight break is no gap. Round-the-clock or
    multi-day bars: skipped bar steps.
    """
    out = np.full(len(calendar), np.nan)
    if len(calendar) < 2:
        return out
    utc = calendar.tz_convert("UTC")
    days = calendar.tz_convert(tz).tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
    weekmask = "1111111" if bars_per_year / bars_per_day >= 360 else "1111100"
    skipped_days = np.busday_count(days[:-1], days[1:], weekmask=weekmask) - 1.0
    ticks_per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[utc.unit]
    skipped_steps = np.rint(np.diff(utc.asi8) / ticks_per_second / bar_seconds) - 1.0
    if bars_per_day <= 1 and bar_seconds <= 86_400:
        gap = skipped_days
    elif bar_seconds >= 86_400 or bars_per_day * bar_seconds >= 86_400:
        gap = skipped_steps
    else:
        gap = np.where(days[1:] == days[:-1], skipped_steps, skipped_days * bars_per_day)
    out[1:] = np.maximum(gap, 0.0)
    return out


def _with_price_slack(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with high/low widened by PRICE_TOLERANCE for the high/low pair rules."""
    df = frame.copy()
    if "high" in df.columns:
        df["_high_slack"] = df["high"] + df["high"].abs() * PRICE_TOLERANCE
    if "low" in df.columns:
        df["_low_slack"] = df["low"] - df["low"].abs() * PRICE_TOLERANCE
    return df


def _bars_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars plus helper columns that compare each row with the previous row of its symbol."""
    df = _with_price_slack(bars)
    by_symbol = df.groupby("symbol", sort=False)
    df["_prev_close"] = by_symbol["close"].shift(1)
    df["_prev_timestamp"] = by_symbol["timestamp"].shift(1)
    df["_ts_step"] = (df["timestamp"] - df["_prev_timestamp"]).dt.total_seconds()
    # symbol order: rank codes must not decrease from row to row (contiguous, sorted blocks)
    codes = pd.factorize(df["symbol"], sort=True)[0].astype(float)
    codes[codes < 0] = np.nan  # a null symbol is not_null's business
    df["_prev_symbol"] = df["symbol"].shift(1)
    df["_symbol_step"] = pd.Series(codes, index=df.index).diff()
    prev = df["_prev_close"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        df["_return"] = df["close"].to_numpy() / prev - 1.0
        price_dev = np.max(np.abs(df[list(PRICES)].to_numpy() - prev[:, None]), axis=1) / np.abs(prev)
    masked_dev = np.maximum(price_dev, np.abs(df["volume"].to_numpy()))
    df["_masked_dev"] = np.where(df["tradable"].to_numpy(), np.nan, masked_dev)
    return df


def _symbols_frame(bars: pd.DataFrame, calendar: pd.DatetimeIndex) -> pd.DataFrame:
    """One row per symbol: distinct timestamps, calendar length, first calendar timestamp it lacks."""
    counts = bars.groupby("symbol", sort=True)["timestamp"].nunique()
    frame = pd.DataFrame({"symbol": counts.index, "bars": counts.to_numpy(), "calendar_bars": len(calendar)})
    first_missing: list[Any] = [None] * len(frame)
    by_symbol = bars.groupby("symbol")["timestamp"]
    for i in np.flatnonzero(frame["bars"].to_numpy() < len(calendar)):
        have = by_symbol.get_group(frame.at[i, "symbol"])
        first_missing[i] = calendar[~calendar.isin(have)][0]
    frame["first_missing"] = first_missing
    return frame


def derive_tables(frames: dict[str, pd.DataFrame], meta: dict | None) -> dict[str, pd.DataFrame]:
    """The frames GE validates: inputs with helper columns, plus the per-symbol and calendar frames.

    ``meta`` is None when its fields are unusable; the calendar then has no ``_gap_bars``.
    """
    tables: dict[str, pd.DataFrame] = {}
    calendar = None
    if "bars" in frames:
        bars = frames["bars"]
        calendar = pd.DatetimeIndex(bars["timestamp"].dropna().unique()).sort_values()
        tables["bars"] = _bars_frame(bars)
        tables["symbols"] = _symbols_frame(bars, calendar)
        cal = pd.DataFrame({"timestamp": calendar})
        cal["_previous"] = cal["timestamp"].shift(1)
        if meta is not None:
            timing = (float(meta[k]) for k in ("bar_seconds", "bars_per_day", "bars_per_year"))
            cal["_gap_bars"] = missing_bars(calendar, *timing, meta.get("session_tz", "UTC"))
        if "benchmark" in frames:
            cal["_in_benchmark"] = calendar.isin(frames["benchmark"]["timestamp"])
        tables["calendar"] = cal
    for table in ("benchmark", "exogenous"):
        if table in frames:
            frame = _with_price_slack(frames[table])
            if calendar is not None:
                frame["_on_calendar"] = frame["timestamp"].isin(calendar)
            tables[table] = frame
    if "exogenous" in tables:  # NaN is allowed only before a series' first value (the as-of join)
        exo = tables["exogenous"]
        for c in exogenous_columns(exo):
            started = exo[c].notna().cummax()
            exo[f"_started__{c}"] = exo[c].where(started, 0.0)
    return tables


def exogenous_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "timestamp" and not c.startswith("_")]


# --------------------------------------------------------------------------- value rules
def _price_rules(table: str, columns: list[str], prefix: str) -> list[Rule]:
    """Non-null, positive prices, high/low bracketing open/close, volume >= 0 (for present columns)."""
    rules = [
        Rule(f"{prefix}not_null", table, "ExpectColumnValuesToNotBeNull", {"column": c}, c,
             f"{c} has no missing values", f"with {c} null", (c,))
        for c in columns
    ]  # fmt: skip
    rules += [
        Rule(f"{prefix}prices_positive", table, "ExpectColumnValuesToBeBetween",  # +inf fails the max
             {"column": c, "min_value": 0, "strict_min": True, "max_value": sys.float_info.max}, c,
             f"{c} > 0 and finite", f"with {c} <= 0 or infinite", (c,))
        for c in PRICES if c in columns
    ]  # fmt: skip
    pair = {"or_equal": True, "ignore_row_if": "either_value_is_missing"}
    for c in ("open", "close"):
        if "high" in columns and c in columns:
            rules.append(Rule(f"{prefix}high_is_max", table, "ExpectColumnPairValuesAToBeGreaterThanB",
                              {"column_A": "_high_slack", "column_B": c, **pair}, f"high >= {c}",
                              f"high >= {c}", f"with high < {c}", ("high", c)))  # fmt: skip
    for c in ("open", "close"):
        if "low" in columns and c in columns:
            rules.append(Rule(f"{prefix}low_is_min", table, "ExpectColumnPairValuesAToBeGreaterThanB",
                              {"column_A": c, "column_B": "_low_slack", **pair}, f"low <= {c}",
                              f"low <= {c}", f"with low > {c}", ("low", c)))  # fmt: skip
    if "volume" in columns:
        rules.append(Rule(f"{prefix}volume_non_negative", table, "ExpectColumnValuesToBeBetween",
                          {"column": "volume", "min_value": 0, "max_value": sys.float_info.max}, "volume",
                          "volume >= 0 and finite", "with volume < 0 or infinite",
                          ("volume",)))  # fmt: skip
    return rules


def _series_rules(table: str, frame: pd.DataFrame) -> list[Rule]:
    """Benchmark / exogenous: one row per timestamp, every timestamp on the bars calendar."""
    rules = [Rule(f"{table}_unique_timestamps", table, "ExpectColumnValuesToBeUnique",
                  {"column": "timestamp"}, "timestamp", f"one {table} row per timestamp",
                  "sharing their timestamp with another row")]  # fmt: skip
    if "_on_calendar" in frame.columns:
        rules.append(Rule(f"{table}_on_calendar", table, "ExpectColumnValuesToBeInSet",
                          {"column": "_on_calendar", "value_set": [True]}, "timestamp",
                          f"every {table} timestamp is a bars.parquet timestamp",
                          "whose timestamp is not on the bars calendar"))  # fmt: skip
    return rules


def build_rules(cfg: ValidationConfig, tables: dict[str, pd.DataFrame]) -> list[Rule]:
    """The suite for the frames at hand (a frame whose schema failed has no rules)."""
    rules: list[Rule] = []
    if "bars" in tables:
        m, f, n = cfg.max_abs_return, cfg.max_outlier_fraction, cfg.min_bars_per_symbol
        rules.append(Rule("bars_not_empty", "bars", "ExpectTableRowCountToBeBetween", {"min_value": 1}, "",
                          "bars.parquet has at least one row",
                          "bars.parquet has {observed} rows"))  # fmt: skip
        rules += _price_rules("bars", list(BARS_SCHEMA), "")
        rules += [
            Rule("unique_bars", "bars", "ExpectCompoundColumnsToBeUnique",
                 {"column_list": ["symbol", "timestamp"]}, "symbol, timestamp",
                 "one row per (symbol, timestamp)", "sharing their (symbol, timestamp) with another row"),
            Rule("symbols_sorted", "bars", "ExpectColumnValuesToBeBetween",
                 {"column": "_symbol_step", "min_value": 0}, "symbol",
                 "rows come in one block per symbol, blocks sorted by symbol",
                 "whose symbol sorts before the previous row's", ("_prev_symbol",)),
            Rule("timestamps_sorted", "bars", "ExpectColumnValuesToBeBetween",
                 {"column": "_ts_step", "min_value": 0}, "timestamp",
                 "timestamps increase within each symbol", "earlier than the previous row of the same symbol",
                 ("_prev_timestamp",)),
            Rule("masked_bars_flat", "bars", "ExpectColumnValuesToBeBetween",
                 {"column": "_masked_dev", "max_value": MASKED_TOLERANCE}, "tradable=False",
                 "masked bars repeat the previous close with volume 0",
                 "masked (tradable=False) but not flat at the previous close with volume 0",
                 ("open", "high", "low", "close", "volume", "_prev_close")),
            Rule("return_outliers", "bars", "ExpectColumnValuesToBeBetween",
                 {"column": "_return", "min_value": -m, "max_value": m, "mostly": 1.0 - f},
                 f"|return| <= {m}",
                 f"close-to-close returns beyond +-{m} are listed; more than a {f:g} fraction fails",
                 f"with |close-to-close return| > {m}", ("close", "_prev_close", "_return")),
            Rule("bars_per_symbol_min", "symbols", "ExpectColumnValuesToBeBetween",
                 {"column": "bars", "min_value": n}, "bars", f"every symbol has at least {n} bars",
                 f"with fewer than {n} bars", ("bars",)),
            Rule("common_calendar", "symbols", "ExpectColumnPairValuesToBeEqual",
                 {"column_A": "bars", "column_B": "calendar_bars"}, "bars == calendar_bars",
                 "every symbol has a bar on every calendar timestamp", "missing calendar timestamps",
                 ("bars", "calendar_bars", "first_missing")),
        ]  # fmt: skip
    calendar = tables.get("calendar", pd.DataFrame())
    if "_gap_bars" in calendar.columns:
        g = cfg.max_calendar_gap_bars
        rules.append(Rule("calendar_gaps", "calendar", "ExpectColumnValuesToBeBetween",
                          {"column": "_gap_bars", "max_value": g}, f"gap <= {g} bars",
                          f"at most {g} expected bars missing between calendar timestamps",
                          f"with more than {g} expected bars missing before them",
                          ("_previous", "_gap_bars")))  # fmt: skip
    if "_in_benchmark" in calendar.columns:
        rules.append(Rule("benchmark_covers_calendar", "calendar", "ExpectColumnValuesToBeInSet",
                          {"column": "_in_benchmark", "value_set": [True]}, "timestamp",
                          "benchmark.parquet has every bars timestamp",
                          "missing from benchmark.parquet"))  # fmt: skip
    if "benchmark" in tables:
        bench = tables["benchmark"]
        present = [c for c in (*BENCHMARK_SCHEMA, *BENCHMARK_OPTIONAL) if c in bench.columns]
        rules += _price_rules("benchmark", present, "benchmark_") + _series_rules("benchmark", bench)
    if "exogenous" in tables:
        rules += _series_rules("exogenous", tables["exogenous"])
        for c in exogenous_columns(tables["exogenous"]):
            rules += [
                Rule("exogenous_finite", "exogenous", "ExpectColumnValuesToBeBetween",
                     {"column": c, "min_value": -sys.float_info.max, "max_value": sys.float_info.max}, c,
                     f"{c} has no +-inf", f"with {c} = +-inf", (c,)),
                Rule("exogenous_no_late_nan", "exogenous", "ExpectColumnValuesToNotBeNull",
                     {"column": f"_started__{c}"}, c, f"{c} is NaN only before its first value",
                     f"with {c} NaN after its first value", (c,)),
            ]  # fmt: skip
    return rules


# --------------------------------------------------------------------------- running GE
def _context(gx: Any) -> Any:
    """An in-memory context: no files, no analytics calls, no progress bars in the step's log."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _exception_text(result: Any) -> str | None:
    info = result.exception_info or {}
    for item in [info] if "raised_exception" in info else list(info.values()):
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _to_check(rule: Rule, result: Any, frame: pd.DataFrame) -> CheckResult:
    res = result.result or {}
    check = CheckResult(
        rule.name, rule.table, rule.target, rule.description, bool(result.success), "great_expectations"
    )
    error = _exception_text(result)
    if error is not None:
        check.success, check.problem = False, f"the expectation raised: {error}"
        return check
    if "unexpected_count" not in res:  # a table-level expectation: one observed value
        check.observed = str(plain(res.get("observed_value")))
        check.problem = "" if check.success else rule.problem.format(observed=check.observed)
        return check
    unit = TABLES[rule.table].unit
    count = int(res["unexpected_count"])
    total = int(res.get("element_count") or 0) - int(res.get("missing_count") or 0)
    check.unexpected_count = count
    check.rows = [int(i) for i in res.get("unexpected_index_list") or []]
    check.examples = [example_row(frame, rule.table, i, rule.show) for i in check.rows[:MAX_EXAMPLES]]
    check.observed = f"{count:,} of {total:,} {unit}"
    check.problem = "" if check.success else f"{count:,} {unit[:-1] if count == 1 else unit} {rule.problem}"
    if "mostly" in rule.kwargs:  # a tolerated fraction: say how close to it we are
        fractions = f"{count / max(total, 1):.4%}, allowed {1.0 - rule.kwargs['mostly']:.4%}"
        check.observed += f" ({fractions})"
        check.problem += f" ({fractions})" if check.problem else ""
    return check


def run_rules(rules: list[Rule], tables: dict[str, pd.DataFrame]) -> tuple[list[CheckResult], float]:
    """Run the rules as one GE suite + checkpoint per frame; returns the checks and the GE import time."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are noise in our log
    t0 = time.perf_counter()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    import_seconds = time.perf_counter() - t0
    ctx = _context(gx)
    source = ctx.data_sources.add_pandas("canonical")
    results: dict[str, Any] = {}
    for table in dict.fromkeys(r.table for r in rules):
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"canonical_{table}"))
        for rule in (r for r in rules if r.table == table):
            meta = {"check": rule.check_id}  # GE returns results out of order: map them back by this
            suite.add_expectation(
                getattr(gxe, rule.expectation)(**rule.kwargs, description=rule.description, meta=meta)
            )
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"canonical_{table}", data=batch, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"canonical_{table}",
                validation_definitions=[definition],
                result_format={"result_format": "COMPLETE"},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for suite_result in run.run_results.values():
            for r in suite_result.results:
                results[r.expectation_config.meta["check"]] = r
    checks = [_to_check(rule, results[rule.check_id], tables[rule.table]) for rule in rules]
    return checks, import_seconds


# --------------------------------------------------------------------------- entry point
def _outliers(checks: list[CheckResult], bars: pd.DataFrame | None) -> list[dict]:
    check = next((c for c in checks if c.name == "return_outliers"), None)
    if check is None or bars is None:
        return []
    rows = bars.loc[check.rows, ["symbol", "timestamp", "_return"]]
    return [
        {"symbol": plain(s), "timestamp": plain(t), "return": float(r), "row": int(i)}
        for i, s, t, r in zip(rows.index, rows["symbol"], rows["timestamp"], rows["_return"], strict=True)
    ]


def validate_canonical(folder: str | Path, cfg: ValidationConfig) -> Outcome:
    """Validate a canonical dataset folder. Bad data never raises: see ``Outcome.failed``."""
    t0 = time.perf_counter()
    folder = Path(folder)
    frames, meta, checks, notes = load_inputs(folder)
    meta_ok = meta is not None and all(c.success for c in checks if c.name == "meta_fields")
    tables = derive_tables(frames, meta if meta_ok else None)
    if not meta_ok:
        notes.append(
            "calendar_gaps was not run: meta.json lacks usable bar_seconds/bars_per_day/bars_per_year"
        )
    elif "calendar" in tables:
        checks.append(
            meta_matches_bars(meta, frames["bars"], pd.DatetimeIndex(tables["calendar"]["timestamp"]))
        )
    rules = build_rules(cfg, tables)
    ge_checks, import_seconds = run_rules(rules, tables) if rules else ([], 0.0)
    checks += ge_checks
    bars = tables.get("bars")
    return Outcome(
        folder=str(folder),
        checks=checks,
        outliers=_outliers(checks, bars),
        rows=0 if bars is None else len(bars),
        symbols=0 if bars is None else int(bars["symbol"].nunique()),
        calendar_bars=len(tables.get("calendar", ())),
        fingerprint=(meta or {}).get("fingerprint"),
        params=cfg.model_dump(mode="json"),
        notes=notes,
        seconds=time.perf_counter() - t0 - import_seconds,
        ge_import_seconds=import_seconds,
    )
