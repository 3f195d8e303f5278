"""The canonical dataset's expectation suite, run with Great Expectations 1.x.

Every check becomes one :class:`~hmarl.data.validation_report.CheckResult`, whichever engine ran it:

- files, schema and ``meta.json`` are checked here in pandas (GE's type expectations are unreliable on
  pandas-3 dtypes, and a table whose schema is wrong cannot be value-checked at all);
- value rules (:mod:`hmarl.data.expectation_rules`) are GE expectations (:mod:`hmarl.data.ge_suite`) on five
  frames (:mod:`hmarl.data.expectation_tables`): ``bars``, ``benchmark``, ``exogenous`` and two derived ones,
  ``symbols`` (one row per symbol) and ``calendar`` (one row per distinct timestamp).

A dataset without a benchmark (meta.json ``benchmark: null``) has no benchmark.parquet and no benchmark
checks; the report says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from hmarl.config import ConfigError, ValidationConfig
from hmarl.data.canonical import has_benchmark
from hmarl.data.exchange import check_calendar_name
from hmarl.data.expectation_rules import BARS_SCHEMA, BENCHMARK_OPTIONAL, BENCHMARK_SCHEMA, build_rules
from hmarl.data.expectation_tables import derive_tables, missing_bars
from hmarl.data.ge_suite import run_rules
from hmarl.data.validation_report import TABLES, CheckResult, Outcome, example_row, plain

__all__ = ["missing_bars", "validate_canonical"]
META_NUMBERS = ("bar_seconds", "bars_per_day", "bars_per_year", "num_bars")
META_KEYS = ("freq", "start", "end", "fingerprint")
_KIND_NAMES = {"utc_datetime": "datetime64[UTC]", "numeric": "a numeric dtype"}


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
    try:
        check_calendar_name(meta.get("calendar"))
    except (ConfigError, TypeError) as exc:
        problems.append(f"calendar {meta.get('calendar')!r} is not an exchange calendar ({exc})")
    check.observed = f"{len(meta)} fields"
    if problems:
        check.success, check.problem = False, "; ".join(problems)
    return meta


def load_inputs(folder: Path) -> tuple[dict[str, pd.DataFrame], dict | None, list[CheckResult], list[str]]:
    """Read the canonical folder; a frame whose file or schema is broken is left out (and reported)."""
    checks: list[CheckResult] = []
    notes: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    meta = _read_meta(folder, checks)
    for table, schema in (("bars", BARS_SCHEMA), ("benchmark", BENCHMARK_SCHEMA), ("exogenous", {})):
        if table == "exogenous" and not (folder / TABLES[table].file).exists():
            notes.append("exogenous.parquet is absent (it is optional): no exogenous checks")
            continue
        if table == "benchmark" and meta is not None and not has_benchmark(meta):
            notes.append("the data has no benchmark (meta.json benchmark: null): no benchmark checks")
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
    return frames, meta, checks, notes


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


def data_facts(meta: dict | None, bars: pd.DataFrame | None, cfg: ValidationConfig) -> dict:
    """What the report states besides the checks: calendar, benchmark, forward-filled bars, allowed prints."""
    meta = meta or {}
    allowed = []
    if bars is not None and "_print_score_raw" in bars.columns:
        body, extreme = bars["_print_score_raw"], bars["_extreme_score_raw"]
        hit = bars["_print_score"].isna() & (
            (body > cfg.bad_print_sigmas) | (extreme > cfg.bad_print_sigmas_high_low)
        )
        rows = bars.loc[hit, ["symbol", "timestamp"]].assign(score=np.fmax(body, extreme)[hit])
        allowed = [
            {"symbol": plain(s), "timestamp": plain(t), "score": float(z)} for s, t, z in rows.to_numpy()
        ]
    return {
        "freq": meta.get("freq"),
        "calendar": meta.get("calendar"),
        "bars_per_year": meta.get("bars_per_year"),
        "benchmark": meta.get("benchmark", meta.get("benchmark_symbol")),
        "max_fill_bars": meta.get("max_fill_bars"),
        "filled_bars": {
            "benchmark": meta.get("benchmark_filled_bars", 0),
            **meta.get("exogenous_filled_bars", {}),
        },
        "allowed_bad_prints": allowed,
    }


def validate_canonical(folder: str | Path, cfg: ValidationConfig) -> Outcome:
    """Validate a canonical dataset folder. Bad data never raises: see ``Outcome.failed``."""
    t0 = time.perf_counter()
    folder = Path(folder)
    frames, meta, checks, notes = load_inputs(folder)
    meta_ok = meta is not None and all(c.success for c in checks if c.name == "meta_fields")
    tables = derive_tables(frames, meta if meta_ok else None, cfg)
    if not meta_ok:
        notes.append(
            "calendar_gaps was not run: meta.json lacks usable bar_seconds/bars_per_day/bars_per_year"
        )
    elif "calendar" in tables:
        checks.append(
            meta_matches_bars(meta, frames["bars"], pd.DatetimeIndex(tables["calendar"]["timestamp"]))
        )
    rules = build_rules(cfg, tables, meta.get("calendar") if meta_ok else None)
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
        facts=data_facts(meta, bars, cfg),
        seconds=time.perf_counter() - t0 - import_seconds,
        ge_import_seconds=import_seconds,
    )
