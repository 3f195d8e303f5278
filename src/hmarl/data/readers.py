"""Raw bar files (long or wide; Parquet or CSV) -> a validated, sorted :class:`Panel`.

Values are never fixed here: NaN, zero or negative prices and OHLC inconsistencies pass through for the
validate step to report. What is rejected (as :class:`DataError` naming file, column, symbol and row):
missing files, unreadable or empty files, missing columns, non-numeric values, unparseable timestamps and
duplicate (symbol, timestamp) bars. Naive timestamps are taken as UTC.

Paths may be local or object-store URIs (``s3://bucket/bars/``, ``gs://…``, ``memory://…``): a URI is
listed and read through fsspec (pandas hands it to pyarrow / fsspec), so a cluster run ingests straight
from the bucket. ``s3://`` needs s3fs and ``gs://`` gcsfs installed (the ``cloud`` extra); credentials
come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, … from a Kubernetes Secret).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hmarl.errors import DataError

VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
RAW_COLUMNS = ("symbol", "timestamp", *VALUE_COLUMNS)
DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")
_ALIASES = {"date": "timestamp", "datetime": "timestamp", "time": "timestamp", "ticker": "symbol"}
_NA_TEXT = {"", "nan", "na", "n/a", "null", "none"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
DataFile = Path | str  # a local path, or an object-store URI (str: Path would fold its '//')


@dataclass
class Panel:
    """Long bars as arrays sorted by (symbol, timestamp); ``symbols`` sorted, ``codes`` index it."""

    symbols: list[str]
    codes: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) int64 ns since epoch, UTC
    values: dict[str, np.ndarray]  # OHLCV name -> (N,) float64

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.symbols))

    def subset(self, keep: np.ndarray) -> Panel:
        """The panel restricted to symbol codes ``keep`` (re-coded; order stays sorted)."""
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        recode = np.full(len(self.symbols), -1, dtype=np.int64)
        recode[keep] = np.arange(len(keep))
        rows = recode[self.codes] >= 0
        return Panel(
            [self.symbols[k] for k in keep],
            recode[self.codes[rows]],
            self.ts[rows],
            {k: v[rows] for k, v in self.values.items()},
        )


# --------------------------------------------------------------------------- files
def is_uri(spec: str | Path) -> bool:
    """``scheme://…`` (s3, gs, memory, file, …): read through fsspec."""
    return isinstance(spec, str) and bool(_URI.match(spec))


def _name(path: DataFile) -> str:
    return path.name if isinstance(path, Path) else path.rstrip("/").rsplit("/", 1)[-1]


def data_suffix(path: DataFile) -> str | None:
    name = _name(path).lower()
    return next((s for s in DATA_SUFFIXES if name.endswith(s)), None)


def filesystem(uri: str, key: str = "data.path"):
    """(fsspec filesystem, path inside it) of ``uri``; a missing driver names the package to install."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:  # fsspec: "Install s3fs to access S3"
        raise DataError(f"{key}: {uri}: {exc} (pip install 'hmarl[cloud]')") from None
    except ValueError as exc:  # "Protocol not known: …"
        raise DataError(f"{key}: {uri}: {exc}") from None


def _resolve_uri(uri: str, key: str) -> list[str]:
    fs, path = filesystem(uri, key)
    if any(c in path for c in "*?["):
        files = [p for p in fs.glob(path) if fs.isfile(p) and data_suffix(p)]
        if not files:
            raise DataError(f"{key}: glob {uri!r} matches no .parquet or .csv file")
    elif fs.isdir(path):
        files = [p for p in fs.ls(path, detail=False) if fs.isfile(p) and data_suffix(p)]
        if not files:
            raise DataError(f"{key}: folder {uri} holds no .parquet or .csv file")
    elif not fs.exists(path):
        raise DataError(f"{key}: file not found: {uri}")
    elif not data_suffix(path):
        raise DataError(f"{key}: {uri}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")
    else:
        return [uri]  # as given
    return sorted(fs.unstrip_protocol(p) for p in files)  # fsspec's canonical URIs (memory:///…)


def resolve_files(spec: str | Path, key: str = "data.path") -> list[DataFile]:
    """A file, a folder (its data files) or a glob -> sorted data files; nothing found is an error.
    Local paths come back as :class:`Path`, object-store URIs as ``str``."""
    text = str(spec)
    if is_uri(text):
        return _resolve_uri(text, key)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        files = [f for f in files if data_suffix(f)]
        if not files:
            raise DataError(f"{key}: glob {text!r} matches no .parquet or .csv file")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and data_suffix(f))
        if not files:
            raise DataError(f"{key}: folder {path} holds no .parquet or .csv file")
        return files
    if not path.exists():
        raise DataError(f"{key}: file not found: {path}")
    if not data_suffix(path):
        raise DataError(f"{key}: {path}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")
    return [path]


def _size(path: DataFile) -> int:
    if isinstance(path, Path):
        return path.stat().st_size
    fs, inner = filesystem(path)
    return fs.size(inner)


def read_table(path: DataFile) -> pd.DataFrame:
    """One Parquet/CSV file (local or URI) with lower-cased column names; empty or unreadable files are errors."""
    if _size(path) == 0:
        raise DataError(f"{path}: empty file")
    try:
        df = pd.read_parquet(path) if data_suffix(path) in (".parquet", ".pq") else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except Exception as exc:  # any reader failure means the file is unreadable or corrupt
        raise DataError(f"{path}: cannot read file ({type(exc).__name__}: {exc})") from None
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    names = [str(c).strip().lower() for c in df.columns]
    names = [_ALIASES[n] if n in _ALIASES and _ALIASES[n] not in names else n for n in names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column(s) {dupes}")
    df.columns = names
    return df


def require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing required column(s) {missing} (has {list(df.columns)})")


def _row_label(df: pd.DataFrame, i: int) -> str:
    sym = f", symbol {df['symbol'].iloc[i]!r}" if "symbol" in df.columns else ""
    return f"row {i + 1}{sym}"


def numeric_column(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    """``df[col]`` as float64; a value that is not a number (nor a NaN marker) is an error."""
    s = df[col]
    if pd.api.types.is_bool_dtype(s.dtype) or not (
        pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype) or s.dtype == object
    ):
        raise DataError(f"{where}: column {col!r} has dtype {s.dtype}, expected numbers")
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    out = pd.to_numeric(s, errors="coerce")
    text = s.astype("str").str.strip().str.lower()
    bad = (out.isna() & s.notna() & ~text.isin(_NA_TEXT)).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: column {col!r} has a non-numeric value {s.iloc[i]!r} at {_row_label(df, i)}"
        )
    return out.to_numpy(dtype=np.float64, na_value=np.nan)


def timestamp_column(df: pd.DataFrame, where: str, col: str = "timestamp") -> pd.Series:
    """``df[col]`` as datetime64[ns, UTC] (naive = UTC); unparseable or missing values are errors."""
    s = df[col]
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        out = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_localize("UTC")
    elif pd.api.types.is_numeric_dtype(s.dtype):
        raise DataError(
            f"{where}: column {col!r} holds numbers ({s.dtype}); expected datetimes or ISO-8601 text"
        )
    else:
        out = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
        if (out.isna() & s.notna()).any():  # not all ISO 8601: parse each value on its own
            out = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
        bad = (out.isna() & s.notna()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: unparseable timestamp {s.iloc[i]!r} at {_row_label(df, i)}")
    missing = out.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: missing timestamp at {_row_label(df, int(np.argmax(missing)))}")
    return out.dt.as_unit("ns")


def timestamps_ns(s: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """int64 ns since epoch of a tz-aware datetime column (no per-element conversion)."""
    arr = s.array if isinstance(s, pd.Series) else s
    return np.asarray(arr.as_unit("ns").asi8, dtype=np.int64)


def to_datetime_index(ts_ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(ts_ns, dtype="datetime64[ns]")).tz_localize("UTC")


def raw_bars(df: pd.DataFrame, where: str, symbol: str | None = None) -> pd.DataFrame:
    """Check and type one raw table: the seven raw columns, symbol from ``symbol`` (wide) or a column."""
    needed = [c for c in RAW_COLUMNS if symbol is None or c != "symbol"]
    require_columns(df, needed, where)
    if symbol is not None and "symbol" in df.columns:
        other = df["symbol"].astype("str") != symbol
        if other.any():
            i = int(np.argmax(other.to_numpy()))
            raise DataError(
                f"{where}: row {i + 1} has symbol {df['symbol'].iloc[i]!r}, file is for {symbol!r}"
            )
    if symbol is None:
        sym = df["symbol"]
        if sym.isna().any():
            raise DataError(f"{where}: missing symbol at row {int(np.argmax(sym.isna().to_numpy())) + 1}")
        sym = sym.astype("str")
    else:
        sym = pd.Series(symbol, index=df.index, dtype="str")
    out = {"symbol": sym, "timestamp": timestamp_column(df, where)}
    out.update({c: numeric_column(df, c, where) for c in VALUE_COLUMNS})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- panel
def build_panel(parts: list[tuple[pd.DataFrame, str]]) -> Panel:
    """Concatenate typed raw tables (with their source labels), sort, reject duplicate bars."""
    df = parts[0][0] if len(parts) == 1 else pd.concat([p for p, _ in parts], ignore_index=True)
    source = np.repeat(np.arange(len(parts)), [len(p) for p, _ in parts])
    codes, uniques = pd.factorize(df["symbol"], sort=True)
    codes = codes.astype(np.int64)
    ts = timestamps_ns(df["timestamp"])
    order = np.lexsort((ts, codes))
    codes, ts, source = codes[order], ts[order], source[order]
    dup = (codes[1:] == codes[:-1]) & (ts[1:] == ts[:-1])
    if dup.any():
        i = int(np.argmax(dup))
        files = sorted({parts[source[i]][1], parts[source[i + 1]][1]})
        raise DataError(
            f"duplicate bar: symbol {uniques[codes[i]]!r} at {to_datetime_index(ts[i : i + 1])[0]} "
            f"appears twice (in {' and '.join(files)})"
        )
    values = {c: df[c].to_numpy(dtype=np.float64)[order] for c in VALUE_COLUMNS}
    return Panel([str(u) for u in uniques], codes, ts, values)


def wide_symbol(path: DataFile) -> str:
    name = _name(path)
    suffix = data_suffix(path) or Path(name).suffix
    return name[: len(name) - len(suffix)]


def read_bars(spec: str | Path, layout: str = "long", key: str = "data.path") -> tuple[Panel, list[DataFile]]:
    """Read every file of ``spec`` (file, folder or glob) in ``layout`` into one :class:`Panel`."""
    files = resolve_files(spec, key)
    parts = []
    if layout == "wide":
        seen: dict[str, DataFile] = {}
        for f in files:
            sym = wide_symbol(f)
            if sym in seen:
                raise DataError(f"{key}: two files for symbol {sym!r}: {seen[sym]} and {f}")
            seen[sym] = f
            parts.append((raw_bars(read_table(f), str(f), symbol=sym), str(f)))
    else:
        parts = [(raw_bars(read_table(f), str(f)), str(f)) for f in files]
    return build_panel(parts), files
