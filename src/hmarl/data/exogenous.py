"""Exogenous series (``data.exogenous``: VIX, rates, ...) joined to the calendar as-of backward.

A bar at time t gets the last value stamped at or before t (bars before the first value get NaN), so
nothing from after the bar leaks in. A bar with no new value since the previous bar carries the last one
forward: at most ``max_fill_bars`` in a row (the source's own key, else ``data.max_fill_bars``; a monthly
series on daily bars needs ~23), else a DataError naming the key; the filled count goes to meta.json -- provided each file's timestamp is the moment its value became
known (a daily close stamped at midnight of its own date would be known too early: stamp it at the
close). Columns are named ``<name>__<column>``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.config import ExogenousSource
from hmarl.data.benchmark import runs
from hmarl.data.readers import (
    numeric_column,
    read_table,
    require_columns,
    resolve_files,
    timestamp_column,
    timestamps_ns,
    to_datetime_index,
)
from hmarl.errors import DataError


def read_exogenous(src: ExogenousSource) -> pd.DataFrame:
    """One source -> frame sorted by timestamp with its ``<name>__<col>`` float64 columns."""
    key = f"data.exogenous[{src.name}]"
    frames = []
    for path in resolve_files(src.path, f"{key}.path"):
        df = read_table(path)
        where = f"{key}: {path}"
        require_columns(df, ["timestamp"], where)
        if src.columns is None:
            cols = [
                c
                for c in df.columns
                if c not in ("timestamp", "symbol") and pd.api.types.is_numeric_dtype(df[c])
            ]
            if not cols:
                raise DataError(f"{where}: no numeric column besides timestamp")
        else:
            cols = [str(c).strip().lower() for c in src.columns]
            require_columns(df, cols, where)
        out = {"timestamp": timestamp_column(df, where)}
        out.update({f"{src.name}__{c}": numeric_column(df, c, where) for c in cols})
        frames.append(pd.DataFrame(out))
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    ts = timestamps_ns(frame["timestamp"])
    dup = ts[1:] == ts[:-1]
    if dup.any():
        raise DataError(f"{key}: duplicate timestamp {to_datetime_index(ts[1:][dup][:1])[0].isoformat()}")
    return frame


def filled_bars(idx: np.ndarray, calendar: np.ndarray, max_fill: int, key: str) -> int:
    """Bars after a series' first value that carry an old value (``idx``: as-of row per bar); a run longer
    than ``max_fill`` is a DataError."""
    carried = np.zeros(len(idx), dtype=bool)
    carried[1:] = (idx[1:] == idx[:-1]) & (idx[1:] >= 0)
    starts, lengths = runs(carried)
    if len(lengths) and lengths.max() > max_fill:
        i = int(np.argmax(lengths))
        stamp = to_datetime_index(calendar[starts[i] : starts[i] + 1])[0].isoformat()
        raise DataError(
            f"{key}: no new value for {lengths[i]} bars in a row from {stamp} (at most {max_fill} are filled "
            f"forward; raise {key}.max_fill_bars or data.max_fill_bars, or fix the file)"
        )
    return int(carried.sum())


def align_exogenous(
    frames: list[pd.DataFrame], calendar: np.ndarray, sources: list[ExogenousSource], max_fill: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Join each sorted frame as-of backward onto the calendar (causal: last value at or before a bar);
    also the filled-bar count per source."""
    out = {"timestamp": to_datetime_index(calendar)}
    filled = {}
    for frame, src in zip(frames, sources, strict=True):
        idx = np.searchsorted(timestamps_ns(frame["timestamp"]), calendar, side="right") - 1
        limit = max_fill if src.max_fill_bars is None else src.max_fill_bars
        filled[src.name] = filled_bars(idx, calendar, limit, f"data.exogenous[{src.name}]")
        for col in frame.columns.drop("timestamp"):
            values = frame[col].to_numpy(dtype=np.float64)
            out[col] = np.where(idx >= 0, values[np.maximum(idx, 0)], np.nan)
    names = [c for f in frames for c in f.columns.drop("timestamp")]
    clash = sorted({c for c in names if names.count(c) > 1})
    if clash:
        raise DataError(
            f"data.exogenous: column name(s) {clash} appear twice (give each source its own name)"
        )
    return pd.DataFrame(out), filled
