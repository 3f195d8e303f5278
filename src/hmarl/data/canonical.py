"""The canonical dataset: the contract between ``ingest`` and every later step.

A folder holding

``bars.parquet``
    symbol (string), timestamp (timestamp[ns, UTC]), open, high, low, close, volume (float64),
    tradable (bool); sorted by symbol then timestamp; every symbol has every calendar timestamp, so the
    frame is a full (symbol x calendar) grid and :func:`pivot` is a reshape.
``benchmark.parquet``
    timestamp, close (+ open, high, low, volume when known) on the same calendar; absent when the data
    has no benchmark (meta ``benchmark: null``: nothing is made up).
``exogenous.parquet``
    only when exogenous series are configured: timestamp + ``<name>__<column>`` float64 columns.
``meta.json``
    symbols (sorted), dropped_symbols {symbol: reason}, freq, bar_seconds, bars_per_day, bars_per_year,
    calendar (exchange calendar name or null), session_tz, num_bars, num_symbols, start, end, source,
    fingerprint, gap_rule, benchmark (symbol or null), benchmark_symbol, benchmark_source,
    benchmark_filled_bars, max_fill_bars, exogenous_filled_bars, exogenous_columns, ... The same JSON is in each Parquet file's schema metadata
    under the key ``b"hmarl"``.

``fingerprint`` is a sha256 over the bars' content (symbols, timestamps, values, tradable), independent
of the Parquet encoding, so two ingests of the same data compare equal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hmarl.data.readers import VALUE_COLUMNS, timestamps_ns
from hmarl.errors import DataError
from hmarl.io import atomic_path, read_json, write_json

REQUIRED_COLUMNS = ("symbol", "timestamp", *VALUE_COLUMNS, "tradable")
META_KEY = b"hmarl"
SCHEMA_VERSION = 1
BARS_FILE = "bars.parquet"
BENCHMARK_FILE = "benchmark.parquet"
EXOGENOUS_FILE = "exogenous.parquet"
META_FILE = "meta.json"
_TIMESTAMP = pa.timestamp("ns", tz="UTC")
BARS_SCHEMA = pa.schema(
    [("symbol", pa.string()), ("timestamp", _TIMESTAMP)]
    + [(c, pa.float64()) for c in VALUE_COLUMNS]
    + [("tradable", pa.bool_())]
)


@dataclass
class CanonicalData:
    bars: pd.DataFrame
    benchmark: pd.DataFrame | None  # None: the data has no benchmark
    exogenous: pd.DataFrame | None
    meta: dict

    @property
    def symbols(self) -> list[str]:
        return list(self.meta["symbols"])

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        """The calendar (T,) in UTC."""
        t, _ = grid_shape(self.bars)
        return pd.DatetimeIndex(self.bars["timestamp"].iloc[:t])

    def pivot(self, column: str) -> np.ndarray:
        return pivot(self.bars, column)


def has_benchmark(meta: dict) -> bool:
    """False only when meta.json says the data has no benchmark (``benchmark: null``)."""
    return not ("benchmark" in meta and meta["benchmark"] is None)


def grid_shape(bars: pd.DataFrame) -> tuple[int, int]:
    """(T, S) of a canonical bars frame; a frame that is not a full sorted grid is an error."""
    ts = timestamps_ns(bars["timestamp"])
    if len(ts) == 0:
        raise DataError("canonical bars: no rows")
    starts = np.flatnonzero(ts == ts[0])  # the first calendar bar opens every symbol's block
    t = int(starts[1]) if len(starts) > 1 else len(ts)
    if len(ts) % t or len(starts) != len(ts) // t or not (ts.reshape(-1, t) == ts[:t]).all():
        raise DataError("canonical bars: not a full (symbol x calendar) grid sorted by symbol, timestamp")
    return t, len(ts) // t


def pivot(bars: pd.DataFrame, column: str) -> np.ndarray:
    """``(T, S)`` array of one column, symbols in ``meta["symbols"]`` order (a reshape, no pivot_table)."""
    t, s = grid_shape(bars)
    return np.ascontiguousarray(bars[column].to_numpy().reshape(s, t).T)


def fingerprint(bars: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update("\n".join(bars["symbol"].unique().tolist()).encode())
    h.update(timestamps_ns(bars["timestamp"]).astype("<i8").tobytes())
    for col in VALUE_COLUMNS:
        v = bars[col].to_numpy(dtype=np.float64)
        h.update(np.where(np.isnan(v), np.nan, v).astype("<f8").tobytes())  # one NaN bit pattern
    h.update(bars["tradable"].to_numpy(dtype=bool).astype(np.uint8).tobytes())
    return h.hexdigest()


def check_bars(bars: pd.DataFrame, symbols: list[str] | None = None) -> None:
    """The bars frame honours the contract (columns, dtypes, sort order, full grid)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        raise DataError(f"canonical bars: missing column(s) {missing}")
    if str(bars["timestamp"].dtype) != "datetime64[ns, UTC]":
        raise DataError(
            f"canonical bars: timestamp dtype {bars['timestamp'].dtype}, expected datetime64[ns, UTC]"
        )
    if not pd.api.types.is_bool_dtype(bars["tradable"].dtype):
        raise DataError(f"canonical bars: tradable dtype {bars['tradable'].dtype}, expected bool")
    for col in VALUE_COLUMNS:
        if bars[col].dtype != np.float64:
            raise DataError(f"canonical bars: {col} dtype {bars[col].dtype}, expected float64")
    t, s = grid_shape(bars)
    sym = bars["symbol"].to_numpy(dtype=object)[::t]
    if not (bars["symbol"].to_numpy(dtype=object).reshape(s, t) == sym[:, None]).all():
        raise DataError("canonical bars: a symbol's rows are not one contiguous block")
    if list(sym) != sorted(sym) or len(set(sym)) != s:
        raise DataError("canonical bars: symbols are not sorted and unique")
    if symbols is not None and list(sym) != list(symbols):
        raise DataError("canonical bars: symbols differ from meta['symbols']")
    if t > 1 and (np.diff(timestamps_ns(bars["timestamp"])[:t]) <= 0).any():
        raise DataError("canonical bars: timestamps are not strictly increasing within a symbol")


def _table(df: pd.DataFrame, meta_json: bytes, schema: pa.Schema) -> pa.Table:
    """Arrow table of ``df``'s columns in ``schema`` (built column by column: no pandas metadata)."""
    arrays = []
    for field in schema:
        col = df[field.name]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(timestamps_ns(col).view("datetime64[ns]"), type=field.type))
        elif pa.types.is_string(field.type):
            arrays.append(pa.array(col).cast(pa.string()))
        else:
            arrays.append(pa.array(col.to_numpy(dtype=field.type.to_pandas_dtype()), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata({META_KEY: meta_json}))


def _series_schema(df: pd.DataFrame) -> pa.Schema:
    return pa.schema(
        [("timestamp", _TIMESTAMP)] + [(c, pa.float64()) for c in df.columns if c != "timestamp"]
    )


def write_canonical(
    path: str | Path,
    bars: pd.DataFrame,
    benchmark: pd.DataFrame | None,
    exogenous: pd.DataFrame | None,
    meta: dict,
) -> dict:
    """Write the folder atomically; returns the meta as written (with ``fingerprint``)."""
    symbols = list(meta["symbols"])
    check_bars(bars, symbols)
    calendar = timestamps_ns(bars["timestamp"])[: len(bars) // len(symbols)]
    for name, frame in (("benchmark", benchmark), ("exogenous", exogenous)):
        if frame is not None and not np.array_equal(timestamps_ns(frame["timestamp"]), calendar):
            raise DataError(f"canonical {name}: timestamps differ from the bars' calendar")
    meta = {
        **meta,
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint(bars),
        "exogenous_columns": [] if exogenous is None else [c for c in exogenous.columns if c != "timestamp"],
    }
    meta_json = json.dumps(meta, sort_keys=True, default=str).encode()
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        opts = {"compression": "zstd"}
        pq.write_table(_table(bars[list(REQUIRED_COLUMNS)], meta_json, BARS_SCHEMA), tmp / BARS_FILE, **opts)
        for frame, file in ((benchmark, BENCHMARK_FILE), (exogenous, EXOGENOUS_FILE)):
            if frame is not None:
                pq.write_table(_table(frame, meta_json, _series_schema(frame)), tmp / file, **opts)
        write_json(tmp / META_FILE, meta)
    return meta


def read_canonical(path: str | Path, verify: bool = True) -> CanonicalData:
    """Load a canonical folder; ``verify`` re-checks the grid and the fingerprint (~0.1 s per 600k rows)."""
    path = Path(path)
    for name in (META_FILE, BARS_FILE):
        if not (path / name).exists():
            raise DataError(f"{path}: not a canonical dataset ({name} missing)")
    meta = read_json(path / META_FILE)
    if not (path / BENCHMARK_FILE).exists() and has_benchmark(meta):
        raise DataError(
            f"{path}: {BENCHMARK_FILE} missing (meta.json does not say the data has no benchmark)"
        )
    bars = pd.read_parquet(path / BARS_FILE)
    benchmark = pd.read_parquet(path / BENCHMARK_FILE) if has_benchmark(meta) else None
    exo_path = path / EXOGENOUS_FILE
    exogenous = pd.read_parquet(exo_path) if exo_path.exists() else None
    if verify:
        check_bars(bars, meta["symbols"])
        if fingerprint(bars) != meta.get("fingerprint"):
            raise DataError(f"{path}: bars.parquet does not match the fingerprint in meta.json")
        if benchmark is not None and len(benchmark) != meta["num_bars"]:
            raise DataError(f"{path}: benchmark has {len(benchmark)} bars, meta says {meta['num_bars']}")
    return CanonicalData(bars, benchmark, exogenous, meta)
