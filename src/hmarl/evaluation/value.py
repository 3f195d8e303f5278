"""The value tier: does the policy beat passive investing on the same test bars, net of costs?

Equal-weight buy-and-hold of the same symbols, filled and charged like any order, on the walk-forward test
bars the policy traded, is the reference. Three numbers, each one a ``value`` criterion of the gate
(``gate.criteria``), every Sharpe in excess of the risk-free rate (the cash rate idle cash earned):

- ``value_excess_sharpe_vs_buy_hold``: policy Sharpe - buy-and-hold Sharpe. Must exceed a margin (0.1):
  a buy-and-hold clone scores ~0 and fails.
- ``value_matched_vol_return_vs_buy_hold``: the policy's excess returns scaled to buy-and-hold's
  volatility (``rf + k (r - rf)``, ``k = sd(bh - rf) / sd(r - rf)``), compounded to an annual return, minus
  buy-and-hold's annual return. It compares returns at equal risk, so a policy that is mostly cash is
  neither punished for its size nor credited for its calm; an all-cash policy has no excess volatility to
  scale (undefined: fails closed).
- ``value_excess_annual_return``: the policy's own annual return over the risk-free path (no scaling).
  Sharpe is blind to how much capital is at work (cash dilutes mean and volatility alike), so this one
  asks for real money above cash: an all-cash policy earns exactly the rate, 0 here, and fails.

Cash cannot fake any of them: cash adds nothing in excess of the rate. The passive rules (``vol_target``,
``trend_filter``) and the benchmark are reported alongside (:func:`value_rows`), not judged.
"""

from __future__ import annotations

import math

import numpy as np

from hmarl.evaluation.metrics import bar_returns, excess
from hmarl.evaluation.period import POLICY

REFERENCE = "buy_hold"
COMPARED = (POLICY, "buy_hold", "vol_target", "trend_filter", "benchmark")
_MIN_VOL = 1e-6  # annualized excess volatility below this is no volatility (all cash, float noise)
_NAN = float("nan")


def matched_vol_annual_return(equity, reference, bars_per_year: float, risk_free=None) -> tuple[float, float]:
    """(annual return of ``equity``'s excess returns scaled to ``reference``'s excess volatility, the scale
    ``k``); NaN when either has (almost) no excess volatility."""
    x = excess(bar_returns(equity), risk_free)
    xr = excess(bar_returns(reference), risk_free)
    if x.size < 2:
        return _NAN, _NAN
    sd, sd_ref = x.std(ddof=1), xr.std(ddof=1)
    if sd * math.sqrt(bars_per_year) < _MIN_VOL or sd_ref * math.sqrt(bars_per_year) < _MIN_VOL:
        return _NAN, _NAN
    k = sd_ref / sd
    rf = bar_returns(equity) - x
    growth = float(np.prod(1.0 + rf + k * x))
    if growth <= 0:
        return -1.0, k
    return growth ** (bars_per_year / x.size) - 1.0, k


def value_values(agg) -> dict[str, float]:
    """The value criteria's values (module docstring) from an :class:`~hmarl.evaluation.aggregate.Aggregate`;
    NaN (a fail) when the policy or buy-and-hold is missing."""
    base = agg.series[agg.cost_bps]
    if POLICY not in base or REFERENCE not in base:
        return dict.fromkeys(
            (
                "value_excess_sharpe_vs_buy_hold",
                "value_matched_vol_return_vs_buy_hold",
                "value_excess_annual_return",
            ),
            _NAN,
        )
    pol, ref = agg.metrics[POLICY], agg.metrics[REFERENCE]
    matched, _ = matched_vol_annual_return(
        base[POLICY].equity, base[REFERENCE].equity, agg.bars_per_year, agg.risk_free
    )
    return {
        "value_excess_sharpe_vs_buy_hold": pol["sharpe"] - ref["sharpe"],
        "value_matched_vol_return_vs_buy_hold": matched - ref["annual_return"],
        "value_excess_annual_return": pol["excess_annual_return"],
    }


def value_rows(agg) -> list[dict]:
    """The report's value table: the policy, buy-and-hold, the passive rules and the benchmark (when the
    data has one) at the base cost, with each one's annual return at buy-and-hold's volatility."""
    base = agg.series[agg.cost_bps]
    rows = []
    for name in COMPARED:
        if name not in base:
            continue
        m = agg.metrics[name]
        matched, k = (
            matched_vol_annual_return(
                base[name].equity, base[REFERENCE].equity, agg.bars_per_year, agg.risk_free
            )
            if REFERENCE in base
            else (_NAN, _NAN)
        )
        rows.append(
            {
                "name": name,
                "annual_return": m["annual_return"],
                "excess_annual_return": m["excess_annual_return"],
                "sharpe (excess)": m["sharpe"],
                "volatility": m["volatility"],
                "max_drawdown": m["max_drawdown"],
                "exposure": m["exposure"],
                "annual_return at buy_hold vol": matched,
                "vol scale": k,
            }
        )
    return rows
