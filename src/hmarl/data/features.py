"""The 23 causal technical features per symbol and bar, computed on ``(T, S)`` arrays.

Conventions shared by every feature (and by :mod:`hmarl.data.regime`, which reuses the helpers):

- Causal: the value at bar ``t`` uses bars ``<= t`` only (rolling sums are cumulative-sum
  differences, EMAs are recursive filters, lags shift forward in time).
- Masked bars (``tradable=False``) are missing data, never prices: their OHLCV become NaN before
  anything is computed. Rolling statistics skip them (a window needs at least half of its bars
  observed), EMAs hold their state across them, and lagged quantities (returns, gap, true range)
  are measured from the last *observed* close, so the first bar after a gap carries the real move
  over the gap instead of a fake run of zero returns.
- Scale-free: returns and ratios only, because prices are back-adjusted.
- Undefined values (warm-up, too few observed bars, masked bars) are NaN here; the feature step
  stores them as 0 and marks the bar not tradable.
- Standard deviations are population (ddof=0) over the observed values of the window.
- Windows are in bars; the defaults are the usual daily-bar settings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.errors import DataError

RETURN_HORIZONS = (1, 2, 5, 10, 20)
VOLUME_Z_WINDOW = 20

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RETURN_HORIZONS),  # log return over k bars
    "vol_5",  # std of 1-bar log returns, last 5 bars
    "vol_20",
    "vol_ratio",  # vol_5 / vol_20
    "volume_z",  # log(1+volume) z-score vs the previous 20 bars (t-20..t-1)
    "dollar_volume_z",  # log(1+close*volume) z-score vs the previous 20 bars
    "rsi_14",  # Wilder RSI(14) / 100, on log returns
    "macd",  # (EMA12 - EMA26) / close
    "macd_signal",  # EMA9 of macd
    "macd_hist",  # macd - macd_signal
    "bb_pctb",  # Bollinger(20, 2) %B
    "bb_width",  # Bollinger band width / middle band
    "atr_14",  # Wilder ATR(14) of the true range relative to the previous close
    "hl_range",  # (high - low) / close
    "clv",  # (close - low) / (high - low), 0.5 when high == low
    "gap",  # open / previous close - 1
    "intrabar_ret",  # close / open - 1
    "ma_dist_20",  # close / SMA20 - 1
    "ma_dist_50",
)


# --------------------------------------------------------------------------- causal helpers
def lag(x: np.ndarray, k: int) -> np.ndarray:
    """``out[t] = x[t - k]`` along axis 0 (NaN for the first ``k`` bars)."""
    out = np.full(x.shape, np.nan)
    if k < x.shape[0]:
        out[k:] = x[: x.shape[0] - k]
    return out


def ffill(x: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along axis 0 (leading gaps stay NaN)."""
    rows = np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    last = np.maximum.accumulate(np.where(np.isfinite(x), rows, 0), axis=0)
    return np.take_along_axis(x, last, axis=0)


def _window_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum over bars ``t-n+1..t`` (fewer at the start) as a difference of cumulative sums."""
    cs = np.cumsum(x, axis=0)
    out = cs.copy()
    out[n:] -= cs[:-n]
    return out


def _min_count(n: int) -> int:
    return max(2, (n + 1) // 2)


def rolling_mean_std(x: np.ndarray, n: int, min_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the finite values among bars ``t-n+1..t``.

    NaN where fewer than ``min_count`` (default: half the window) values are finite. Each column is
    shifted by its first finite value before summing squares, which keeps the cumulative sums small
    (less cancellation); that value lies at or before every bar whose output it affects.
    """
    ok = np.isfinite(x)
    first = np.argmax(ok, axis=0)
    anchor = np.where(ok.any(axis=0), np.take_along_axis(x, first[None], axis=0)[0], 0.0)
    d = np.where(ok, x - anchor, 0.0)
    count = _window_sum(ok.astype(np.float64), n)
    enough = count >= (min_count or _min_count(n))
    safe = np.where(enough, count, 1.0)
    mean_d = _window_sum(d, n) / safe
    var = np.maximum(_window_sum(d * d, n) / safe - mean_d * mean_d, 0.0)
    return np.where(enough, mean_d + anchor, np.nan), np.where(enough, np.sqrt(var), np.nan)


def rolling_mean(x: np.ndarray, n: int, min_count: int | None = None) -> np.ndarray:
    return rolling_mean_std(x, n, min_count)[0]


def rolling_std(x: np.ndarray, n: int, min_count: int | None = None) -> np.ndarray:
    return rolling_mean_std(x, n, min_count)[1]


def trailing_z(x: np.ndarray, n: int, min_count: int | None = None) -> np.ndarray:
    """``(x_t - mean) / std`` with the statistics of the previous ``n`` bars (``t-n..t-1``)."""
    mean, std = rolling_mean_std(lag(x, 1), n, min_count)
    return ratio(x - mean, std)


def ema(x: np.ndarray, alpha: float, min_count: int = 1) -> np.ndarray:
    """Recursive EMA ``e_t = alpha*x_t + (1-alpha)*e_{t-1}`` per column, started at the first value.

    Missing (NaN) inputs hold the state; NaN until ``min_count`` values were observed.
    """
    frame = pd.DataFrame(x.reshape(x.shape[0], -1))
    out = frame.ewm(alpha=alpha, adjust=False, ignore_na=True, min_periods=min_count).mean()
    return out.to_numpy(dtype=np.float64).reshape(x.shape)


def ratio(num: np.ndarray, den: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """``num / den``; 0 where ``|den| <= floor`` (nothing to scale by); NaN inputs stay NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(np.isnan(den) | (np.abs(den) > floor), out, num * 0.0)


def observed(ohlcv: np.ndarray, tradable: np.ndarray) -> tuple[np.ndarray, ...]:
    """Open, high, low, close, volume ``(T, S)`` with masked bars set to NaN."""
    return tuple(np.where(tradable, ohlcv[..., i], np.nan) for i in range(5))


def log_returns(close: np.ndarray) -> np.ndarray:
    """1-bar log return from the last observed close (NaN at masked bars)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(close) - np.log(lag(ffill(close), 1))


# --------------------------------------------------------------------------- the features
def compute_features(
    ohlcv: np.ndarray, tradable: np.ndarray, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """``(T, S, 5)`` OHLCV + ``(T, S)`` tradable -> ``(T, S, len(FEATURE_NAMES))``, NaN where undefined.

    Computed in float64; the result is cast to ``dtype`` (the store keeps float32).
    """
    o, h, lo, c, v = observed(np.asarray(ohlcv, dtype=np.float64), np.asarray(tradable, dtype=bool))
    seen_c = ffill(c)  # last observed close
    prev_c = lag(seen_c, 1)
    r1 = log_returns(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_c = np.log(c)
        log_c_seen = np.log(seen_c)
        log_volume = np.log1p(v)
        log_dollar_volume = np.log1p(c * v)
    cols = {f"ret_{k}": log_c - lag(log_c_seen, k) for k in RETURN_HORIZONS}
    cols["vol_5"] = rolling_std(r1, 5)
    cols["vol_20"] = rolling_std(r1, 20)
    cols["vol_ratio"] = ratio(cols["vol_5"], cols["vol_20"])
    cols["volume_z"] = trailing_z(log_volume, VOLUME_Z_WINDOW)
    cols["dollar_volume_z"] = trailing_z(log_dollar_volume, VOLUME_Z_WINDOW)

    gain = ema(np.maximum(r1, 0.0), 1 / 14, 14)
    loss = ema(np.maximum(-r1, 0.0), 1 / 14, 14)
    cols["rsi_14"] = 0.5 + 0.5 * ratio(gain - loss, gain + loss)  # = gain / (gain + loss); 0.5 if flat

    macd = (ema(c, 2 / 13, 12) - ema(c, 2 / 27, 26)) / c
    signal = ema(macd, 2 / 10, 9)
    cols.update(macd=macd, macd_signal=signal, macd_hist=macd - signal)

    mid, sd = rolling_mean_std(c, 20)
    cols["bb_pctb"] = 0.5 + ratio(c - mid, 4.0 * sd)  # (c - lower) / (upper - lower)
    cols["bb_width"] = 4.0 * sd / mid

    true_range = np.fmax(h, prev_c) - np.fmin(lo, prev_c)
    true_range[np.isnan(h)] = np.nan  # fmax/fmin would fill masked bars from the previous close
    cols["atr_14"] = ema(true_range / prev_c, 1 / 14, 14)
    cols["hl_range"] = (h - lo) / c
    cols["clv"] = 0.5 + 0.5 * ratio(2.0 * c - h - lo, h - lo)
    cols["gap"] = o / prev_c - 1.0
    cols["intrabar_ret"] = c / o - 1.0
    cols["ma_dist_20"] = c / rolling_mean(c, 20) - 1.0
    cols["ma_dist_50"] = c / rolling_mean(c, 50) - 1.0

    assert len(cols) == len(FEATURE_NAMES)  # with the lookup below: exactly the named features
    return _stack_last(cols, FEATURE_NAMES, dtype)


def _stack_last(cols: dict[str, np.ndarray], names: tuple[str, ...], dtype: type[np.floating]) -> np.ndarray:
    """Stack named arrays along a new last axis (assigning into one buffer is ~4x faster than np.stack)."""
    first = cols[names[0]]
    out = np.empty((*first.shape, len(names)), dtype=dtype)
    for i, name in enumerate(names):
        out[..., i] = cols[name]
    return out


# --------------------------------------------------------------------------- normalization
NORM_STD_FLOOR = 1e-6


def fold_norm_stats(
    features: np.ndarray, usable: np.ndarray, train_ranges: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold mean and std ``(n_folds, F)`` over the usable bars of each train range, pooled over symbols.

    Only the train bars enter, so validation/test data can never leak into the scaling. The std is
    floored at :data:`NORM_STD_FLOOR` so that a constant feature does not divide by zero.
    """
    means, stds = [], []
    for start, end in train_ranges:
        x = np.asarray(features[start:end][usable[start:end]], dtype=np.float64)
        if x.shape[0] == 0:
            raise DataError(f"train bars [{start}, {end}) hold no usable (tradable, defined) entries")
        means.append(x.mean(axis=0))
        stds.append(np.maximum(x.std(axis=0), NORM_STD_FLOOR))
    return np.stack(means), np.stack(stds)
