"""The volatility-target prior of the master's caps (``env.master.cap_unit: vol_target``).

The equal-weight portfolio of the tradable symbols, scaled to an annual volatility target, is the classic
volatility-managed exposure (and a baseline of every evaluation, ``evaluation/passive.py``, which reads the
same two functions below). Under ``cap_unit: vol_target`` a directive's cap ``c`` is a multiple of that
rule's target: the per-position allocation at bar ``t`` is ``risk x min(1, c x target / sigma_t) / S``, so
the grid's ``c = 1`` at risk 1 *is* the rule and the master learns the deviation from it (``c < 1`` cuts
risk below the rule, ``c > 1`` keeps more of the market in calm bars) instead of the exposure itself.

``sigma_t`` is the annualized realized volatility of the equal-weight portfolio's close-to-close returns over
the trailing ``vol_window`` bars up to ``t`` (causal: the decision at the close of ``t`` reads bars ``<= t``).
Before the window holds two returns (the first bars of the data only) the scale is 1 (the cap as an
equal-weight multiple). Every other cap unit gets the scale 1 and no ceiling, so its numbers are unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from hmarl.env.market import CLOSE, TRADABLE


def equal_weight_returns(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """``(T,)`` close-to-close return of the equal-weight portfolio of the symbols tradable at each bar
    (``close``, ``tradable``: ``(T, S)``; bar 0 returns 0)."""
    ret = np.zeros_like(close)
    ret[1:] = close[1:] / close[:-1] - 1.0
    n = tradable.sum(1)
    return np.where(tradable, ret, 0.0).sum(1) / np.maximum(n, 1)


def realized_vol(returns: np.ndarray, window: int, bars_per_year: float) -> np.ndarray:
    """``(T,)`` annualized std (ddof 1) of ``returns`` over the trailing ``window`` bars up to each bar;
    NaN until two returns are in the window."""
    sigma = pd.Series(returns).rolling(window, min_periods=2).std(ddof=1).to_numpy()
    return sigma * math.sqrt(bars_per_year)


def cap_scaling(cfg, market) -> tuple[torch.Tensor, float]:
    """``(scale (T,), ceiling)`` of ``market`` under ``cfg`` (an ``EnvConfig``): a directive's per-position
    cap at bar ``t`` is ``min(cap x scale[t], ceiling)`` (see the module docstring)."""
    m = cfg.master
    ones = torch.ones(market.num_bars, dtype=market.table.dtype, device=market.table.device)
    if m.cap_unit != "vol_target":
        return ones, math.inf
    close = market.table[CLOSE].double().cpu().numpy()
    tradable = market.table[TRADABLE].double().cpu().numpy() > 0.5
    sigma = realized_vol(equal_weight_returns(close, tradable), m.vol_window, market.bars_per_year)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.isfinite(sigma) & (sigma > 0), m.vol_target / sigma, 1.0)
    return torch.as_tensor(scale, dtype=ones.dtype).to(ones.device), 1.0 / market.num_symbols


def effective_caps(env, d: torch.Tensor) -> torch.Tensor:
    """``(N,)`` per-position cap (fraction of equity) of the directives ``d`` (``(N, 3)`` rows of the
    directive table) at each env's current bar."""
    return torch.clamp(d[:, 1] * env.cap_scale.index_select(0, env.t), max=env.cap_ceiling)


def allocation(env, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cap (N,), alloc (N, 1))``: the effective cap of the directives ``d`` and each symbol's allowed
    allocation ``equity x risk x cap`` (the observation's and the initial purchase's)."""
    cap = effective_caps(env, d)
    return cap, (env.equity * d[:, 0] * cap).unsqueeze(1)
