"""Universe selection, the common calendar, the gap rule, and the full (symbol x calendar) bar grid.

* Selection: ``data.symbols`` when given, else the top ``universe.top_n`` symbols by median dollar
  volume (close x volume) over ``universe.dollar_volume_window`` calendar bars, ties broken by symbol
  name. ``selection_at: start`` ranks on the first window of the data: the universe then uses no
  information from the later periods it is trained and tested on (ranking on the last window picks
  the symbols that turned out liquid, a look-ahead / survivorship bias for every earlier backtest).
* Calendar: the union of the selected symbols' timestamps.
* Gap rule ``drop``: a symbol missing any calendar bar is dropped. ``mask``: a symbol missing at most
  ``max_missing_fraction`` of the bars is kept and each missing bar becomes a row with OHLC = the previous
  close (leading gaps: the first close), volume 0 and ``tradable = False`` -- a mark-to-market value,
  never a tradable price. Dropped symbols are recorded with their reason and are not replaced by
  the next-ranked ones (that would change the calendar the rule was judged on).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.config import UniverseConfig
from hmarl.data.readers import VALUE_COLUMNS, Panel, to_datetime_index
from hmarl.errors import DataError


def pick_symbols(panel: Panel, symbols: list[str]) -> Panel:
    """The panel restricted to an explicit symbol list; unknown symbols are an error naming them."""
    index = {s: i for i, s in enumerate(panel.symbols)}
    unknown = sorted({s for s in symbols if s not in index})
    if unknown:
        raise DataError(f"data.symbols: unknown symbol(s) {unknown} (not in the input data)")
    return panel.subset(np.array([index[s] for s in symbols], dtype=np.int64))


def median_dollar_volume(panel: Panel, window: int, at: str) -> np.ndarray:
    """(S,) median close x volume over the first/last ``window`` calendar bars; NaN without data."""
    calendar = np.unique(panel.ts)
    w = min(window, len(calendar))
    lo, hi = (calendar[0], calendar[w - 1]) if at == "start" else (calendar[-w], calendar[-1])
    rows = (panel.ts >= lo) & (panel.ts <= hi)
    dollar = panel.values["close"][rows] * panel.values["volume"][rows]
    med = pd.Series(dollar).groupby(panel.codes[rows]).median()
    out = np.full(len(panel.symbols), np.nan)
    out[med.index.to_numpy()] = med.to_numpy()
    return out


def top_n(panel: Panel, cfg: UniverseConfig) -> tuple[Panel, dict]:
    """The ``cfg.top_n`` most liquid symbols (ties and symbols without data ranked by name)."""
    med = median_dollar_volume(panel, cfg.dollar_volume_window, cfg.selection_at)
    key = np.where(np.isfinite(med), -med, np.inf)
    order = np.lexsort((np.arange(len(med)), key))  # symbols are sorted, so code order = name order
    chosen = order[: cfg.top_n]
    info = {
        "method": "top_n_median_dollar_volume",
        "top_n": cfg.top_n,
        "window_bars": cfg.dollar_volume_window,
        "selection_at": cfg.selection_at,
        "candidates": len(panel.symbols),
        "median_dollar_volume": {panel.symbols[i]: float(med[i]) for i in chosen},
    }
    return panel.subset(chosen), info


def _first_missing(ts: np.ndarray, calendar: np.ndarray) -> int:
    pos = np.searchsorted(calendar, ts)
    gap = pos != np.arange(len(pos))
    return int(calendar[int(np.argmax(gap))] if gap.any() else calendar[len(pos)])


def apply_gap_rule(panel: Panel, cfg: UniverseConfig) -> tuple[Panel, np.ndarray, dict[str, str]]:
    """Kept panel, its calendar (union of kept timestamps) and {dropped symbol: reason}."""
    calendar = np.unique(panel.ts)
    missing = len(calendar) - panel.counts
    limit = 0 if cfg.gap_rule == "drop" else cfg.max_missing_fraction * len(calendar)
    bad = np.flatnonzero(missing > limit)
    starts = np.concatenate([[0], np.cumsum(panel.counts)])
    dropped = {}
    for code in bad:  # one pass per dropped symbol (few), not per row
        first = _first_missing(panel.ts[starts[code] : starts[code + 1]], calendar)
        rule = "drop" if cfg.gap_rule == "drop" else f"mask allows {cfg.max_missing_fraction:.2%}"
        dropped[panel.symbols[code]] = (
            f"missing {missing[code]} of {len(calendar)} calendar bars ({missing[code] / len(calendar):.2%}; "
            f"gap_rule {rule}), first missing {to_datetime_index(np.array([first]))[0].isoformat()}"
        )
    if len(bad) == len(panel.symbols):
        raise DataError(
            f"no symbol left after gap_rule={cfg.gap_rule}: every one of the {len(bad)} selected symbols "
            f"misses calendar bars (e.g. {next(iter(dropped.items()))[0]}: {next(iter(dropped.values()))})"
        )
    kept = panel.subset(np.setdiff1d(np.arange(len(panel.symbols)), bad))
    return kept, np.unique(kept.ts), dropped


def _ffill_rows(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the last valid value at or before each column (leading: the first valid value)."""
    cols = np.arange(values.shape[1])
    idx = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    first = np.argmax(valid, axis=1)[:, None]
    idx = np.where(idx < 0, first, idx)
    return np.take_along_axis(values, idx, axis=1)


def bar_grid(panel: Panel, calendar: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(S, T) OHLCV arrays on the calendar with missing bars masked, and the (S, T) tradable mask."""
    s, t = len(panel.symbols), len(calendar)
    flat = panel.codes * t + np.searchsorted(calendar, panel.ts)
    tradable = np.zeros(s * t, dtype=bool)
    tradable[flat] = True
    tradable = tradable.reshape(s, t)
    grid = {}
    for col in VALUE_COLUMNS:
        arr = np.full(s * t, np.nan)
        arr[flat] = panel.values[col]
        grid[col] = arr.reshape(s, t)
    if not tradable.all():
        close = grid["close"]
        mark = _ffill_rows(close, tradable & np.isfinite(close))
        hole = ~tradable
        for col in ("open", "high", "low", "close"):
            grid[col][hole] = mark[hole]
        grid["volume"][hole] = 0.0
    return grid, tradable


def grid_frame(symbols: list[str], calendar: np.ndarray, grid: dict[str, np.ndarray], tradable: np.ndarray):
    """The canonical long frame (sorted by symbol, then timestamp) of a bar grid."""
    t = len(calendar)
    data = {
        "symbol": pd.array(np.repeat(np.asarray(symbols, dtype=object), t), dtype="str"),
        "timestamp": to_datetime_index(np.tile(calendar, len(symbols))),
    }
    data.update({c: grid[c].ravel() for c in VALUE_COLUMNS})
    data["tradable"] = tradable.ravel()
    return pd.DataFrame(data)
