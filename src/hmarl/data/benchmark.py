"""The benchmark series: read from a file, or built as the equal-weight index of a universe, and put on
the bars' calendar.

The benchmark is never traded, so short holes (at most ``data.max_fill_bars`` consecutive bars) carry the
previous values forward (volume 0; the count is in meta.json and the validation report); a longer hole, or
a benchmark that starts after the calendar, is a DataError naming the option to change. Day-based calendars match benchmark bars by trading date (a midnight-labelled daily file
joins 14:30 UTC bars); intraday ones by exact timestamp.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.data.calendar import Frequency, session_days
from hmarl.data.readers import (
    VALUE_COLUMNS,
    numeric_column,
    read_table,
    require_columns,
    resolve_files,
    timestamp_column,
    timestamps_ns,
    to_datetime_index,
)
from hmarl.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")


def equal_weight_index(prices: dict[str, np.ndarray], base: float = 100.0) -> dict[str, np.ndarray]:
    """Daily-rebalanced equal-weight index of (T, S) price arrays.

    ``close_t = close_{t-1} * mean_s(close_{t,s} / close_{t-1,s})`` over symbols with finite, positive
    prices (a bar with none is flat); open/high/low use the same ratio to the previous close, so the
    index's high >= max(open, close) and low <= min(open, close) whenever its constituents' are.
    ``volume`` (when given) is the total over symbols.
    """
    close = prices["close"]
    prev = np.vstack([close[:1], close[:-1]])  # bar 0 is measured against its own close

    def mean_ratio(x: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x) & np.isfinite(prev) & (prev > 0) & (x > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ok, x / np.where(ok, prev, 1.0), 0.0)
        n = ok.sum(axis=1)
        return np.where(n > 0, ratio.sum(axis=1) / np.maximum(n, 1), 1.0)

    level = base * np.cumprod(mean_ratio(close))
    prev_level = np.concatenate([[base], level[:-1]])
    out = {"close": level}
    for col in ("open", "high", "low"):
        if col in prices:
            out[col] = prev_level * mean_ratio(prices[col])
    if "volume" in prices:
        out["volume"] = np.nansum(prices["volume"], axis=1)
    return out


def read_benchmark(spec: str, symbol: str) -> tuple[pd.DataFrame, str]:
    """Benchmark file(s) -> (frame with timestamp + numeric columns, symbol used)."""
    frames = []
    for path in resolve_files(spec, "data.benchmark_path"):
        df = read_table(path)
        where = str(path)
        require_columns(df, ["timestamp", "close"], where)
        if "symbol" in df.columns:
            names = sorted(df["symbol"].dropna().astype("str").unique())
            pick = symbol if symbol in names else names[0] if len(names) == 1 else None
            if pick is None:
                raise DataError(f"{where}: benchmark symbol {symbol!r} not found (file has {names[:10]})")
            df = df[df["symbol"].astype("str") == pick].reset_index(drop=True)
            symbol = pick
        out = {"timestamp": timestamp_column(df, where)}
        out.update({c: numeric_column(df, c, where) for c in VALUE_COLUMNS if c in df.columns})
        frames.append(pd.DataFrame(out))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True), symbol


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the True runs of a 1-d mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return starts, ends - starts


def align_benchmark(
    frame: pd.DataFrame,
    calendar: np.ndarray,
    freq: Frequency,
    tz: str,
    max_fill: int,
    where: str = "benchmark",
) -> tuple[pd.DataFrame, int]:
    """The benchmark on ``calendar`` (holes of <= ``max_fill`` bars filled) and the number of filled bars."""
    ts = timestamps_ns(frame["timestamp"])
    key_cal, key = (session_days(calendar, tz), session_days(ts, tz)) if freq.day_based else (calendar, ts)
    dup = key[1:] == key[:-1]
    if dup.any():
        i = int(np.argmax(dup))
        raise DataError(f"{where}: two bars for {to_datetime_index(ts[i : i + 2]).tolist()} (duplicate bar)")
    pos = np.searchsorted(key_cal, key)
    hit = (pos < len(key_cal)) & (key_cal[np.minimum(pos, len(key_cal) - 1)] == key)
    cols = [c for c in VALUE_COLUMNS if c in frame.columns]
    out = {c: np.full(len(calendar), np.nan) for c in cols}
    for c in cols:
        out[c][pos[hit]] = frame[c].to_numpy(dtype=np.float64)[hit]
    hole = ~np.isfinite(out["close"])
    stamps = to_datetime_index(calendar)
    if hole[0]:
        first = to_datetime_index(ts[:1])[0].isoformat() if len(ts) else "never"
        raise DataError(
            f"{where} does not cover the calendar: no value for its first bar {stamps[0].isoformat()} "
            f"(benchmark starts {first})"
        )
    starts, lengths = runs(hole)
    if len(lengths) and lengths.max() > max_fill:
        i = int(np.argmax(lengths))
        raise DataError(
            f"{where} does not cover the calendar: {lengths[i]} consecutive bars missing from "
            f"{stamps[starts[i]].isoformat()} (at most data.max_fill_bars={max_fill} are filled forward; "
            "raise it, or fix the benchmark file)"
        )
    if hole.any():
        idx = np.maximum.accumulate(np.where(hole, 0, np.arange(len(calendar))))
        for c in cols:
            out[c] = out[c][idx] if c != "volume" else np.where(hole, 0.0, out[c])
    return pd.DataFrame({"timestamp": stamps, **out}), int(hole.sum())
