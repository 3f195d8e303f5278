"""The frames the validation suite checks: canonical inputs plus helper columns and derived frames.

Helper columns (``_return``, ``_ts_step``, ``_gap_bars``, ``_print_score``, ...) turn per-symbol and calendar
rules into plain column rules, so Great Expectations reports the offending rows by position. Calendar gaps
are counted against the exchange calendar in meta.json (``calendar``, see :mod:`hmarl.data.exchange`), or,
without one, against the data's own calendar (:func:`missing_bars`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hmarl.config import ValidationConfig
from hmarl.data.bad_prints import BODY, EXTREMES, allowed_rows, print_scores
from hmarl.data.calendar import NS, freq_label
from hmarl.data.exchange import calendar_gaps

PRICES = ("open", "high", "low", "close")
# relative slack for high/low against open/close: adjusted prices carry float rounding (the real
# SPY benchmark has highs one ulp below the close)
PRICE_TOLERANCE = 1e-9


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


def _bars_frame(bars: pd.DataFrame, cfg: ValidationConfig, tz: str) -> pd.DataFrame:
    """Bars plus helper columns that compare each row with the previous (and next) row of its symbol."""
    df = _with_price_slack(bars)
    by_symbol = df.groupby("symbol", sort=False)
    df["_prev_close"] = by_symbol["close"].shift(1)
    df["_next_close"] = by_symbol["close"].shift(-1)
    allowed = allowed_rows(df, cfg.allow_bad_prints, tz)
    for name, columns in (("_print_score", BODY), ("_extreme_score", EXTREMES)):
        raw = print_scores(df, cfg.bad_print_window, cfg.bad_print_reversion, columns)
        df[f"{name}_raw"] = raw
        df[name] = np.where(allowed, np.nan, raw)
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


def _calendar_frame(calendar: pd.DatetimeIndex, meta: dict | None) -> pd.DataFrame:
    """One row per timestamp: the previous one, expected bars missing before it, whether it is off the
    exchange calendar's sessions (meta ``calendar``)."""
    cal = pd.DataFrame({"timestamp": calendar})
    cal["_previous"] = cal["timestamp"].shift(1)
    if meta is None:
        return cal
    tz = meta.get("session_tz", "UTC")
    freq = freq_label(int(meta["bar_seconds"]) * NS)
    if meta.get("calendar") is not None and freq.bar_seconds <= 86_400:
        ts = np.asarray(calendar.as_unit("ns").asi8, dtype=np.int64)
        cal["_gap_bars"], cal["_off_session"] = calendar_gaps(ts, meta["calendar"], freq, tz)
    else:  # no exchange calendar (or multi-day bars): the data's own calendar
        timing = (float(meta[k]) for k in ("bar_seconds", "bars_per_day", "bars_per_year"))
        cal["_gap_bars"] = missing_bars(calendar, *timing, tz)
    return cal


def derive_tables(
    frames: dict[str, pd.DataFrame], meta: dict | None, cfg: ValidationConfig
) -> dict[str, pd.DataFrame]:
    """The frames GE validates: inputs with helper columns, plus the per-symbol and calendar frames.

    ``meta`` is None when its fields are unusable; the calendar then has no ``_gap_bars``.
    """
    tables: dict[str, pd.DataFrame] = {}
    calendar = None
    if "bars" in frames:
        bars = frames["bars"]
        calendar = pd.DatetimeIndex(bars["timestamp"].dropna().unique()).sort_values()
        tables["bars"] = _bars_frame(bars, cfg, (meta or {}).get("session_tz", "UTC"))
        tables["symbols"] = _symbols_frame(bars, calendar)
        cal = _calendar_frame(calendar, meta)
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
