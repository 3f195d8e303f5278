"""Exogenous series (``data.exogenous``: VIX, rates, ...) joined to the calendar as-of backward.

A bar at time t gets the last value stamped at or before t (bars before the first value get NaN), so
nothing from after the bar leaks in -- provided each file's timestamp is the moment its value became
known (a daily close stamped at midnight of its own date would be known too early: stamp it at the
close). Columns are named ``<name>__<column>``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.config import ExogenousSource
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


def align_exogenous(frames: list[pd.DataFrame], calendar: np.ndarray) -> pd.DataFrame:
    """Join each sorted frame as-of backward onto the calendar (causal: last value at or before a bar)."""
    out = {"timestamp": to_datetime_index(calendar)}
    for frame in frames:
        idx = np.searchsorted(timestamps_ns(frame["timestamp"]), calendar, side="right") - 1
        for col in frame.columns.drop("timestamp"):
            values = frame[col].to_numpy(dtype=np.float64)
            out[col] = np.where(idx >= 0, values[np.maximum(idx, 0)], np.nan)
    names = [c for f in frames for c in f.columns.drop("timestamp")]
    clash = sorted({c for c in names if names.count(c) > 1})
    if clash:
        raise DataError(
            f"data.exogenous: column name(s) {clash} appear twice (give each source its own name)"
        )
    return pd.DataFrame(out)
