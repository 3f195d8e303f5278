"""Next-bar direction labels: down / flat / up from the close-to-close log return over ``label_horizon``,
optionally in units of the trailing volatility (``sl.threshold_unit``)."""

from __future__ import annotations

import numpy as np

from hmarl.data.features import log_returns, rolling_std
from hmarl.data.store import FeatureStore
from hmarl.sl.params import SLConfig

CLASSES = ("down", "flat", "up")
INVALID = -1  # no label: horizon runs past the data, or a bar involved is not tradable


def forward_log_returns(close: np.ndarray, tradable: np.ndarray, horizon: int) -> np.ndarray:
    """``(T, S)`` log(close[t+h] / close[t]); NaN where t+h is past the end or either bar is not tradable."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(close.shape, np.nan)
    ok = tradable[:-horizon] & tradable[horizon:] & (close[:-horizon] > 0) & (close[horizon:] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = np.log(close[horizon:] / close[:-horizon])
    out[:-horizon] = np.where(ok, ret, np.nan)
    return out


def direction_labels(returns: np.ndarray, down_threshold: float, up_threshold: float) -> np.ndarray:
    """``(T, S)`` int64 class per bar: 0 down, 1 flat, 2 up, ``INVALID`` where the return is NaN."""
    labels = np.full(returns.shape, INVALID, dtype=np.int64)
    valid = np.isfinite(returns)
    labels[valid] = 1
    labels[valid & (returns < down_threshold)] = 0
    labels[valid & (returns > up_threshold)] = 2
    return labels


def trailing_volatility(close: np.ndarray, tradable: np.ndarray, window: int) -> np.ndarray:
    """``(T, S)`` std of the one-bar log returns of bars ``t-window+1..t`` (known at bar t; causal)."""
    observed = np.where(tradable, np.asarray(close, dtype=np.float64), np.nan)
    return rolling_std(log_returns(observed), window)


def store_labels(store: FeatureStore, horizon: int, sl: SLConfig) -> np.ndarray:
    """Labels of every (bar, symbol) of the store with the thresholds (and their unit) of ``sl``."""
    close, tradable = np.asarray(store.price("close")), np.asarray(store.tradable)
    returns = forward_log_returns(close, tradable, horizon)
    if sl.threshold_unit == "volatility":
        vol = trailing_volatility(close, tradable, sl.vol_window) * np.sqrt(horizon)
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = np.where(vol > 0, returns / vol, np.nan)
    return direction_labels(returns, sl.down_threshold, sl.up_threshold)
