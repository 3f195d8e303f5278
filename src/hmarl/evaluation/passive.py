"""Two classic passive rules as baselines, on the same bars and costs as the policy.

- ``vol_target``: the equal-weight portfolio scaled to a volatility target, at most fully invested:
  exposure ``min(1, target / sigma_t)`` where ``sigma_t`` is the annualized realized volatility of the
  equal-weight portfolio's close-to-close returns over the trailing ``vol_window`` bars (up to ``t``).
- ``trend_filter``: the equal-weight portfolio while the equal-weight index (the compounded mean
  close-to-close return of the tradable symbols) is above its ``trend_window``-bar simple moving average
  (ending at ``t``), all cash otherwise: the classic 200-day rule on the portfolio. (The per-symbol form
  was measured on the shipped daily data, 143 names, 2008-10 -> 2021-04: single names cross their average
  so often that it traded its book ~8 times a year and paid ~48 % of its capital in costs with the
  default slippage, Sharpe 0.91; a rule that cheap to beat is no baseline.)

Both read only bars ``<= t`` for the decision at the close of ``t`` and fill at ``open[t + 1]``, like the
simulator; the windows reach back before the evaluated range (the market holds the earlier bars), so the
first test bar already has its full history -- causal, no look-ahead. Until a window is full the rule
holds cash (vol target: ``< 2`` returns; trend: ``< trend_window`` index levels).

Execution (:func:`rebalanced_series`) charges the simulator's costs per leg: commission ``env.fee_rate``
and slippage ``slippage_bps + vol_coef x sigma[t] + impact_coef x notional / adv[t]`` (capped), sells
first, buys scaled pro rata when the cash cannot pay for them. To keep turnover sane a symbol is traded
only when its weight is more than ``rebalance_band`` of its equal slot away from the target (or enters /
leaves the rule). Idle cash earns the cash rate (``MarketData.cash_rate``), as in the simulator.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hmarl.config import HmarlConfig
from hmarl.env.market import ADV, CLOSE, OPEN, SIGMA, TRADABLE, MarketData
from hmarl.env.vol_prior import equal_weight_returns, realized_vol
from hmarl.evaluation.period import PolicySeries

PASSIVE = ("vol_target", "trend_filter")


def _table(market: MarketData) -> dict[str, np.ndarray]:
    t = market.table.double().cpu().numpy()
    return {
        "open": t[OPEN],
        "close": t[CLOSE],
        "tradable": t[TRADABLE] > 0.5,
        "sigma": t[SIGMA],
        "adv": t[ADV],
    }


def _equal_weight_returns(market: MarketData) -> tuple[np.ndarray, np.ndarray]:
    """``(T,)`` close-to-close return of the equal-weight portfolio of the tradable symbols, and the
    ``(T, S)`` tradable mask."""
    m = _table(market)
    return equal_weight_returns(m["close"], m["tradable"]), m["tradable"]


def _equal_slots(exposure: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """``(T, S)`` ``exposure[t]`` split equally over the symbols tradable at ``t``."""
    n = np.maximum(tradable.sum(1), 1)
    return np.where(tradable, (exposure / n)[:, None], 0.0)


def vol_target_weights(market: MarketData, cfg: HmarlConfig) -> np.ndarray:
    """``(T, S)`` target weights of the volatility-targeted equal-weight rule at every bar's close."""
    p = cfg.walk_forward.baselines
    ew, tradable = _equal_weight_returns(market)
    sigma = realized_vol(ew, p.vol_window, market.bars_per_year)
    with np.errstate(divide="ignore", invalid="ignore"):
        exposure = np.where(sigma > 0, np.minimum(1.0, p.vol_target / sigma), 1.0)
    return _equal_slots(np.where(np.isfinite(sigma), exposure, 0.0), tradable)


def trend_weights(market: MarketData, cfg: HmarlConfig) -> np.ndarray:
    """``(T, S)`` target weights of the trend-filtered equal-weight rule at every bar's close."""
    window = cfg.walk_forward.baselines.trend_window
    ew, tradable = _equal_weight_returns(market)
    index = np.cumprod(1.0 + ew)
    sma = pd.Series(index).rolling(window, min_periods=window).mean().to_numpy()
    above = np.isfinite(sma) & (index > sma)
    return _equal_slots(above.astype(np.float64), tradable)


def rebalanced_series(
    market: MarketData, cfg: HmarlConfig, bars: tuple[int, int], weights: np.ndarray
) -> PolicySeries:
    """Trade toward ``weights[t]`` (decided at the close of ``t``) at ``open[t + 1]`` over ``bars``
    ``[lo, hi)``, starting flat with ``env.initial_cash`` (see the module docstring)."""
    lo, hi = bars
    env = cfg.env
    m = _table(market)
    rate = market.cash_rate.double().cpu().numpy()
    fee, band = env.fee_rate, cfg.walk_forward.baselines.rebalance_band
    s = market.num_symbols
    shares, cash = np.zeros(s), float(env.initial_cash)
    steps = hi - lo - 1
    equity = np.empty(steps + 1)
    equity[0] = cash
    turnover, costs, exposure = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for j in range(steps):
        t = lo + j
        close0, open1, close1 = m["close"][t], m["open"][t + 1], m["close"][t + 1]
        value0 = shares * close0
        eq0 = cash + value0.sum()
        target = weights[t] * eq0
        slot = eq0 / max(int(m["tradable"][t].sum()), 1)
        change = target - value0
        trade = (np.abs(change) > band * slot) | ((target > 0) != (shares > 0))
        trade &= m["tradable"][t + 1]
        dq = np.where(trade, change / close0, 0.0)
        dq = np.maximum(dq, -shares)  # never sell more than held
        slip = env.slippage_bps / 1e4 + env.slippage_vol_coef * m["sigma"][t]
        slip = np.minimum(
            slip + env.slippage_impact_coef * np.abs(dq) * close0 / m["adv"][t], env.slippage_max
        )
        sold = np.maximum(-dq, 0.0)
        proceeds = (sold * open1 * (1.0 - slip) * (1.0 - fee)).sum()
        bought = np.maximum(dq, 0.0)
        need = (bought * open1 * (1.0 + slip) * (1.0 + fee)).sum()
        scale = min(1.0, (cash + proceeds) / need) if need > 0 else 1.0
        bought = bought * scale
        paid = (bought * open1 * (1.0 + slip) * (1.0 + fee)).sum()
        traded = (sold + bought) * open1
        costs[j] = (sold * open1).sum() - proceeds + paid - (bought * open1).sum()
        shares = shares - sold + bought
        cash = cash + proceeds - paid
        cash += max(cash, 0.0) * rate[t]
        value1 = (shares * close1).sum()
        equity[j + 1] = cash + value1
        turnover[j] = traded.sum() / eq0
        exposure[j] = value1 / equity[j + 1]
    return PolicySeries(equity, turnover, costs, exposure)


def passive_weights(market: MarketData, cfg: HmarlConfig) -> dict[str, np.ndarray]:
    """Target weights of both rules at every bar (they do not depend on costs: compute once)."""
    return {"vol_target": vol_target_weights(market, cfg), "trend_filter": trend_weights(market, cfg)}


def passive_series(
    market: MarketData, cfg: HmarlConfig, bars: tuple[int, int], weights: dict[str, np.ndarray]
) -> dict[str, PolicySeries]:
    """Both passive rules over ``bars`` at ``cfg``'s costs (``weights``: :func:`passive_weights`)."""
    return {name: rebalanced_series(market, cfg, bars, w) for name, w in weights.items()}
