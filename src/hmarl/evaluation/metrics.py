"""Performance metrics of equity paths, vectorized over paths.

Conventions (shared by every caller, so numbers are comparable across steps):

- An equity path is an array ``(T + 1, ...)``: time on axis 0, starting with the initial equity; any
  trailing axes are independent paths (accounts, symbols, seeds). Bar returns are ``V_t / V_{t-1} - 1``.
- Annualization always comes from ``bars_per_year`` (``FeatureStore.bars_per_year`` / ``MarketData``:
  derived from the bar frequency and the calendar), never from a hard-coded 252.
- Ratios with a zero denominator (Sharpe/Sortino with no dispersion, Calmar with no drawdown) are 0 when
  their numerator is 0 too (flat equity: nothing happened) and ``±inf`` otherwise (a gain measured against
  no risk). Denominators below ``1e-12`` count as zero (float noise of a constant-return path).
- NaN means "not defined from this input": Sharpe, Sortino and volatility need at least 2 bar returns,
  every metric needs at least 1; win rate needs at least one bar that moved; turnover, costs and exposure
  need their per-bar input. Consumers that judge (the gate) treat NaN and inf as a failure.
- Sharpe and Sortino use bar returns in excess of the risk-free rate ``rf`` (``risk_free``: the simple
  rate of each bar, what cash earns in the simulator, ``MarketData.cash_rate``; 0 when not given);
  Sortino's downside deviation is ``sqrt(mean(min(r - rf, 0)^2))`` over all bars (target rf).
  ``excess_annual_return`` is the geometric annual return over the risk-free path,
  ``(V_T / V_0 / prod(1 + rf)) ** (bars_per_year / T) - 1`` (an all-cash account: 0). Max drawdown is a positive fraction of the running
  peak (0.25 = 25 %), the peak including the initial equity. Annual return is geometric:
  ``(V_T / V_0) ** (bars_per_year / T) - 1``.
"""

from __future__ import annotations

import math

import numpy as np

from hmarl.errors import DataError

METRIC_NAMES = (
    "total_return",
    "annual_return",
    "excess_annual_return",
    "volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "win_rate",
    "turnover",
    "costs_paid",
    "exposure",
    "num_bars",
)
_ZERO = 1e-12


def check_bars_per_year(bars_per_year: float) -> float:
    bpy = float(bars_per_year)
    if not math.isfinite(bpy) or bpy <= 0:
        raise DataError(f"bars_per_year must be a finite number > 0 (got {bars_per_year!r})")
    return bpy


def _equity(values, name: str = "equity") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0 or v.shape[0] == 0:
        raise DataError(f"{name}: expected a path shaped (bars + 1, ...), got shape {v.shape}")
    bad = ~np.isfinite(v) | (v <= 0)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise DataError(
            f"{name}: values must be finite and > 0; bar {int(where[0])}"
            + (f", path {tuple(int(i) for i in where[1:])}" if v.ndim > 1 else "")
            + f" holds {v[tuple(where)]!r}"
        )
    return v


def ratio(num, den) -> np.ndarray:
    """``num / den`` with the module's zero-denominator rule (0 if both ~0, else ±inf); NaN stays NaN."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    zero_den = np.abs(den) <= _ZERO
    safe = np.where(zero_den, 1.0, den)
    limit = np.where(np.abs(num) <= _ZERO, 0.0, np.copysign(np.inf, num))
    out = np.where(zero_den, limit, num / safe)
    return np.where(np.isnan(num) | np.isnan(den), np.nan, out)


def bar_returns(values) -> np.ndarray:
    """``(T, ...)`` simple returns of equity paths ``(T + 1, ...)``."""
    v = _equity(values)
    return v[1:] / v[:-1] - 1.0


def _sample_std(r: np.ndarray) -> np.ndarray:
    """Std with ddof=1 along axis 0; NaN with fewer than 2 observations (and no numpy warning)."""
    n = r.shape[0]
    if n < 2:
        return np.full(r.shape[1:], np.nan)
    return r.std(0, ddof=1)


def _mean(r: np.ndarray) -> np.ndarray:
    return r.mean(0) if r.shape[0] else np.full(r.shape[1:], np.nan)


def _scalar(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x


def excess(r: np.ndarray, risk_free=None) -> np.ndarray:
    """Bar returns ``(T, ...)`` less the per-bar risk-free rate (a scalar or ``(T,)``; None: 0)."""
    if risk_free is None:
        return r
    rf = np.asarray(risk_free, dtype=np.float64)
    if rf.ndim == 1:
        if rf.shape[0] != r.shape[0]:
            raise DataError(f"risk_free: {rf.shape[0]} rates for {r.shape[0]} bar returns")
        rf = rf.reshape(rf.shape + (1,) * (r.ndim - 1))
    elif rf.ndim:
        raise DataError(f"risk_free: a scalar or one rate per bar expected, got shape {rf.shape}")
    if not np.isfinite(rf).all():
        raise DataError("risk_free: non-finite rate")
    return r - rf


def sharpe_ratio(values, bars_per_year: float, risk_free=None):
    """Annualized Sharpe of the bar returns of value paths ``(T + 1, ...)`` in excess of ``risk_free``
    (per-bar simple rates, see the module docstring): the canonical one.

    Flat excess returns give 0; fewer than 2 bar returns give NaN (see the module docstring)."""
    bpy = check_bars_per_year(bars_per_year)
    r = excess(bar_returns(values), risk_free)
    sd = _sample_std(r)
    return _scalar(ratio(_mean(r), sd) * math.sqrt(bpy) if r.shape[0] >= 2 else sd)


def drawdown(values) -> np.ndarray:
    """``(T + 1, ...)`` drawdown from the running peak, as positive fractions (0 at a new high)."""
    v = _equity(values)
    return 1.0 - v / np.maximum.accumulate(v, axis=0)


def max_drawdown(values):
    return _scalar(drawdown(values).max(0))


def performance_metrics(
    equity,
    bars_per_year: float,
    turnover=None,
    costs=None,
    exposure=None,
    risk_free=None,
) -> dict[str, float | np.ndarray]:
    """All metrics of :data:`METRIC_NAMES` for equity paths ``(T + 1, ...)``.

    Optional per-bar inputs, each ``(T, ...)`` like the returns:
      ``turnover``: traded notional of the bar as a fraction of equity -> annualized mean (times the book
      is traded per year); ``costs``: costs paid in the bar, in currency -> total as a fraction of the
      initial equity; ``exposure``: gross position value / equity -> mean over bars; ``risk_free``: the
      per-bar simple risk-free rate (scalar or ``(T,)``) of Sharpe, Sortino and excess_annual_return.
    Scalars come back as floats for a single path, arrays shaped like the trailing axes otherwise.
    """
    bpy = check_bars_per_year(bars_per_year)
    v = _equity(equity)
    r = v[1:] / v[:-1] - 1.0
    t = r.shape[0]
    paths = v.shape[1:]
    nan = np.full(paths, np.nan)
    growth = v[-1] / v[0]
    out: dict[str, np.ndarray] = {"num_bars": np.full(paths, float(t))}
    if t == 0:
        out.update({k: nan for k in METRIC_NAMES if k != "num_bars"})
        return {k: _scalar(out[k]) for k in METRIC_NAMES}
    x = excess(r, risk_free)
    mean, sd = _mean(x), _sample_std(x)
    annual_return = growth ** (bpy / t) - 1.0
    rf_growth = np.prod(1.0 + (r - x), axis=0)
    mdd = drawdown(v).max(0)
    downside = np.sqrt(np.mean(np.minimum(x, 0.0) ** 2, axis=0))
    moved = (r != 0).sum(0)
    out.update(
        total_return=growth - 1.0,
        annual_return=annual_return,
        excess_annual_return=(growth / rf_growth) ** (bpy / t) - 1.0,
        volatility=_sample_std(r) * math.sqrt(bpy),
        sharpe=ratio(mean, sd) * math.sqrt(bpy) if t >= 2 else nan,
        sortino=ratio(mean, downside) * math.sqrt(bpy) if t >= 2 else nan,
        max_drawdown=mdd,
        calmar=ratio(annual_return, mdd),
        win_rate=np.where(moved > 0, (r > 0).sum(0) / np.maximum(moved, 1), np.nan),
        turnover=_per_bar(turnover, "turnover", r.shape).mean(0) * bpy if turnover is not None else nan,
        costs_paid=_per_bar(costs, "costs", r.shape).sum(0) / v[0] if costs is not None else nan,
        exposure=_per_bar(exposure, "exposure", r.shape).mean(0) if exposure is not None else nan,
    )
    return {k: _scalar(np.asarray(out[k], dtype=np.float64)) for k in METRIC_NAMES}


def _per_bar(values, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != shape:
        raise DataError(f"{name}: expected one value per bar and path, shape {shape}; got {a.shape}")
    if not np.isfinite(a).all():
        bar = int(np.argwhere(~np.isfinite(a))[0][0])
        raise DataError(f"{name}: non-finite value at bar {bar}")
    return a


def drawdown_reduction(with_master: float, without_master: float) -> float:
    """Relative max-drawdown reduction ``1 - dd_with / dd_without`` (0.15 = 15 % smaller drawdown).
    NaN when the baseline had no drawdown (nothing to reduce) or either input is not finite."""
    if not (math.isfinite(with_master) and math.isfinite(without_master)) or without_master <= _ZERO:
        return float("nan")
    return 1.0 - with_master / without_master


def finite_or_none(x) -> float | None:
    """JSON-safe number: NaN/inf -> None (JSON has no NaN; readers must treat None as 'undefined')."""
    x = float(x)
    return x if math.isfinite(x) else None


def edge_t(excess) -> tuple[float, float]:
    """(mean, t-statistic) of a per-step excess-return series; (0, 0) with < 3 steps or no dispersion."""
    excess = np.asarray(excess, dtype=np.float64)
    if excess.size < 3 or excess.std(ddof=1) == 0:
        return 0.0, 0.0
    return float(excess.mean()), float(excess.mean() / excess.std(ddof=1) * np.sqrt(excess.size))
