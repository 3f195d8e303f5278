"""Causal market regime features ``(T, R)``: trend, volatility, breadth, correlation, drawdown.

Same conventions as :mod:`hmarl.data.features` (causal, masked bars are missing, NaN where undefined).
Optional exogenous series (e.g. VIX) are appended as trailing z-scores after :data:`REGIME_NAMES`.
"""

from __future__ import annotations

import numpy as np

from hmarl.data.features import (
    lag,
    log_returns,
    observed,
    ratio,
    rolling_mean,
    rolling_std,
    trailing_z,
)

TREND_WINDOWS = (20, 60)
LONG_MA_WINDOW = 200  # expanding from LONG_MA_MIN_BARS until full, so short data still gets a value
LONG_MA_MIN_BARS = 20
VOL_WINDOW = 20
VOL_Z_WINDOW = 252
BREADTH_MA_WINDOW = 50
CORR_WINDOW = 60
EXOGENOUS_Z_WINDOW = 60

REGIME_NAMES: tuple[str, ...] = (
    *(f"mkt_ret_{n}" for n in TREND_WINDOWS),  # benchmark log return over n bars
    "mkt_ma_dist_200",  # benchmark / its 200-bar SMA - 1
    "mkt_vol_20",  # annualized std of the benchmark's 1-bar log returns, last 20 bars
    "mkt_vol_z",  # mkt_vol_20 z-score vs its previous 252 bars (60 at least)
    "breadth_above_ma50",  # fraction of observed symbols whose close is above their 50-bar SMA
    "breadth_advancing",  # fraction of observed symbols with a positive 1-bar return
    "avg_corr_60",  # sigma-weighted average pairwise return correlation, last 60 bars
    "mkt_drawdown",  # benchmark / its running max - 1
)


def average_correlation(returns: np.ndarray, n: int) -> np.ndarray:
    """Trailing ``n``-bar average pairwise correlation of ``(T, S)`` returns, weighted by sigma_i*sigma_j.

    Exact identity over each window (population moments): ``S^2 var(mean_i r_i) = sum_ij cov_ij``, so
    ``sum_{i!=j} rho_ij s_i s_j = S^2 var(mean r) - sum_i s_i^2`` and dividing by
    ``sum_{i!=j} s_i s_j = (sum s_i)^2 - sum s_i^2`` gives the weighted average. O(T*S), no S x S matrix.
    Missing returns count as 0 (a symbol with no moves in the window carries no weight).
    """
    r = np.nan_to_num(returns, nan=0.0)
    s = r.shape[1]
    var_i = rolling_std(r, n, min_count=n) ** 2
    var_mean = rolling_std(r.mean(axis=1), n, min_count=n) ** 2
    sum_var = var_i.sum(axis=1)
    num = var_mean * s * s - sum_var
    den = np.sqrt(var_i).sum(axis=1) ** 2 - sum_var
    return ratio(num, den)


def _fraction(hit: np.ndarray, seen: np.ndarray) -> np.ndarray:
    count = seen.sum(axis=1)
    return np.where(count > 0, (hit & seen).sum(axis=1) / np.maximum(count, 1), np.nan)


def compute_regime(
    ohlcv: np.ndarray, tradable: np.ndarray, benchmark: np.ndarray, bars_per_year: float
) -> np.ndarray:
    """``(T, S, 5)`` OHLCV, ``(T, S)`` tradable, ``(T,)`` benchmark close -> ``(T, len(REGIME_NAMES))``."""
    close = observed(np.asarray(ohlcv, dtype=np.float64), np.asarray(tradable, dtype=bool))[3]
    bench = np.asarray(benchmark, dtype=np.float64)
    log_b = np.log(bench)
    cols = {f"mkt_ret_{n}": log_b - lag(log_b, n) for n in TREND_WINDOWS}
    cols["mkt_ma_dist_200"] = bench / rolling_mean(bench, LONG_MA_WINDOW, LONG_MA_MIN_BARS) - 1.0
    vol = rolling_std(log_returns(bench), VOL_WINDOW) * np.sqrt(bars_per_year)
    cols["mkt_vol_20"] = vol
    cols["mkt_vol_z"] = trailing_z(vol, VOL_Z_WINDOW, min_count=60)

    ma = rolling_mean(close, BREADTH_MA_WINDOW)
    cols["breadth_above_ma50"] = _fraction(close > ma, np.isfinite(close) & np.isfinite(ma))
    r1 = log_returns(close)
    cols["breadth_advancing"] = _fraction(r1 > 0, np.isfinite(r1))
    cols["avg_corr_60"] = average_correlation(r1, CORR_WINDOW)
    with np.errstate(invalid="ignore"):
        cols["mkt_drawdown"] = bench / np.fmax.accumulate(bench) - 1.0
    assert len(cols) == len(REGIME_NAMES)
    return np.stack([cols[name] for name in REGIME_NAMES], axis=-1)


def exogenous_regime(columns: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Exogenous ``(T,)`` series (at least one) -> names and ``(T, E)`` trailing z-scores.

    Levels of arbitrary series (an index, a rate) are not comparable across time, their surprise is.
    """
    names = [f"{name}_z{EXOGENOUS_Z_WINDOW}" for name in columns]
    x = np.stack([np.asarray(v, dtype=np.float64) for v in columns.values()], axis=-1)
    return names, trailing_z(x, EXOGENOUS_Z_WINDOW)
