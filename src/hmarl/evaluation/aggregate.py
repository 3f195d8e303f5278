"""Evaluated periods (walk-forward folds, or one dataset) joined into one evaluation.

Periods are concatenated in bar order: each series' equity is chained through its bar returns (so fold k+1
starts where fold k ended), per-bar costs are rescaled to the chained equity (a fraction of the bar's
opening equity is what carries over), turnover and exposure are per bar already. Every metric then comes
from :func:`hmarl.evaluation.metrics.performance_metrics` with the periods' own ``bars_per_year``.

Every Sharpe / Sortino / deflated Sharpe is in excess of the periods' risk-free rate (the per-bar cash
rate, concatenated like the returns); stress windows and overfitting statistics: :mod:`robustness`;
files and reports: :mod:`outputs`.

    agg = aggregate([PeriodEvaluation.load(p) for p in folders], cfg)
    write_evaluation("reports/gate", agg, title="Walk-forward evaluation", gate=verdict.to_dict())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hmarl.config import HmarlConfig
from hmarl.errors import DataError
from hmarl.evaluation.metrics import bar_returns, check_bars_per_year, edge_t, ratio
from hmarl.evaluation.outputs import json_safe, metrics_document, write_evaluation  # noqa: F401 (re-export)
from hmarl.evaluation.period import BASELINES, POLICY, PeriodEvaluation, PolicySeries
from hmarl.evaluation.robustness import (  # noqa: F401 (mlflow_trial_sharpes: re-export)
    BENCHMARK,
    mlflow_trial_sharpes,
    overfitting_stats,
    stress_window_rows,
)

_STRESS_METRICS = ("total_return", "annual_return", "sharpe", "max_drawdown", "turnover", "costs_paid")
_NAN = float("nan")


@dataclass
class Aggregate:
    labels: list[str]  # the periods, in bar order
    dates: list[str]  # T + 1 labels of the chained equity points
    bars_per_year: float
    cost_bps: float  # base round-trip cost
    symbols: list[str]
    series: dict[float, dict[str, PolicySeries]]  # cost level -> name -> chained series
    metrics: dict[str, dict[str, float]]  # name -> metrics at the base cost (policy: + deflated_sharpe, pbo)
    per_period: dict[str, dict[str, dict[str, float]]]  # label -> name -> metrics at the base cost
    stress_windows: list[dict]  # one row per (covered or partly covered window, name); else "not covered"
    symbol_sharpes: dict[str, float]  # symbol -> Sharpe of the policy's P&L in that symbol
    actions: np.ndarray  # (T, 7) executed action shares of the policy per bar
    overfitting: dict[str, float | str]
    notes: list[str] = field(default_factory=list)
    timing_edge: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> mean, t, steps
    risk_free: np.ndarray | None = None  # (T,) per-bar risk-free rate of the chained bars (None: 0)
    risk_free_label: str = "constant 0 a year"  # how it was set (env.cash_rate)
    has_benchmark: bool = True  # False: the data has no benchmark, its rows are left out
    exposure: list[dict] = field(default_factory=list)  # per period and arm: evaluation/exposure.py

    @property
    def names(self) -> list[str]:
        return list(self.series[self.cost_bps])

    @property
    def equity(self) -> dict[str, np.ndarray]:
        return {n: s.equity for n, s in self.series[self.cost_bps].items()}

    def cost_stress(self) -> dict[float, dict[str, dict[str, float]]]:
        """cost level -> name -> metrics of the whole evaluation at that cost."""
        bpy, rf = self.bars_per_year, self.risk_free
        return {c: {n: s.metrics(bpy, rf) for n, s in by.items()} for c, by in self.series.items()}

    def fold_rows(self) -> list[dict]:
        """The per-period table: dates, bars, the policy's return / drawdown and every name's Sharpe."""
        rows = []
        for label, by_name in self.per_period.items():
            pol = by_name.get(POLICY, {})
            rows.append(
                {
                    "period": label,
                    "bars": by_name[POLICY]["num_bars"],
                    "policy total_return": pol.get("total_return"),
                    "policy max_drawdown": pol.get("max_drawdown"),
                    **{f"{n} sharpe": m["sharpe"] for n, m in by_name.items()},
                }
            )
        return rows

    def cost_stress_rows(self) -> list[dict]:
        return [
            {"cost_bps": c, "name": n, **{k: m[k] for k in _STRESS_METRICS}}
            for c, by_name in self.cost_stress().items()
            for n, m in by_name.items()
        ]


# --------------------------------------------------------------------------- concatenation
def chain(parts: Sequence[PolicySeries]) -> PolicySeries:
    """One series from consecutive periods: equity chained through the bar returns, costs rescaled."""
    returns = np.concatenate([bar_returns(p.equity) for p in parts])
    equity = parts[0].equity[0] * np.cumprod(np.r_[1.0, 1.0 + returns])
    cost_share = np.concatenate([p.costs / p.equity[:-1] for p in parts])  # of the bar's opening equity
    return PolicySeries(
        equity,
        np.concatenate([p.turnover for p in parts]),
        cost_share * equity[:-1],
        np.concatenate([p.exposure for p in parts]),
    )


def _ordered(periods: Sequence[PeriodEvaluation]) -> list[PeriodEvaluation]:
    if not periods:
        raise DataError("aggregate: no evaluated period given")
    ordered = sorted(periods, key=lambda p: p.bars[0])
    first = ordered[0]
    for prev, p in zip(ordered, ordered[1:], strict=False):
        if p.bars[0] < prev.bars[1]:
            raise DataError(f"periods {prev.label} {list(prev.bars)} and {p.label} {list(p.bars)} overlap")
    for p in ordered[1:]:
        for attr in ("bars_per_year", "cost_bps", "symbols"):
            if getattr(p, attr) != getattr(first, attr):
                raise DataError(
                    f"period {p.label}: {attr} {getattr(p, attr)!r} differs from {first.label}'s "
                    f"{getattr(first, attr)!r} (periods of one evaluation share data and costs)"
                )
    if POLICY not in first.base:
        raise DataError(f"period {first.label}: no {POLICY!r} series at the base cost")
    return ordered


def _canonical(names) -> list[str]:
    """The policy, the baselines in their documented order, then any other name (sorted)."""
    names = set(names)
    known = [POLICY, *BASELINES]
    return [n for n in known if n in names] + sorted(names - set(known))


def _common(periods: Sequence[PeriodEvaluation], notes: list[str]) -> dict[float, list[str]]:
    """Cost levels and names present in every period (the base level and the policy are required)."""
    levels = sorted(set.intersection(*(set(p.series) for p in periods)))
    dropped = sorted(set().union(*(set(p.series) for p in periods)) - set(levels))
    if dropped:
        notes.append(f"cost levels {dropped} bps are missing from some periods: left out")
    out = {}
    for c in levels:
        names = _canonical(n for n in periods[0].series[c] if all(n in p.series[c] for p in periods))
        missing = sorted({n for p in periods for n in p.series[c]} - set(names))
        if missing:
            notes.append(f"at {c:g} bps, {missing} are missing from some periods: left out")
        out[c] = names
    if POLICY not in out[periods[0].cost_bps]:
        raise DataError(f"the {POLICY!r} series is missing from some period at the base cost")
    return out


def _joined_dates(periods: Sequence[PeriodEvaluation]) -> list[str]:
    return [periods[0].dates[0]] + [d for p in periods for d in p.dates[1:]]


# --------------------------------------------------------------------------- pieces
def symbol_sharpes(symbol_returns: np.ndarray, symbols: Sequence[str], bars_per_year: float) -> dict:
    """Annualized Sharpe of each symbol's P&L column (bar P&L / equity); NaN with < 2 bars."""
    r = np.asarray(symbol_returns, dtype=np.float64)
    if r.shape[0] < 2:
        return dict.fromkeys(symbols, _NAN)
    s = ratio(r.mean(0), r.std(0, ddof=1)) * math.sqrt(check_bars_per_year(bars_per_year))
    return {sym: float(x) for sym, x in zip(symbols, s, strict=True)}


# --------------------------------------------------------------------------- the evaluation
def aggregate(
    periods: Sequence[PeriodEvaluation], cfg: HmarlConfig, trial_sharpes: np.ndarray | None = None
) -> Aggregate:
    """Join ``periods`` (any order, non-overlapping) into one evaluation; see the module docstring."""
    ordered = _ordered(periods)
    notes: list[str] = []
    levels = _common(ordered, notes)
    first = ordered[0]
    bpy, base = first.bars_per_year, first.cost_bps
    series = {c: {n: chain([p.series[c][n] for p in ordered]) for n in names} for c, names in levels.items()}
    dates = _joined_dates(ordered)
    rf = np.concatenate([p.risk_free for p in ordered])
    labels = sorted({p.risk_free_label for p in ordered})
    notes.append(
        f"risk-free rate: {'; '.join(labels)} (env.cash_rate; idle cash earned it): Sharpe, Sortino, "
        "deflated Sharpe and PBO use returns in excess of it"
    )
    has_benchmark = all(p.info.get("benchmark", "present") == "present" for p in ordered)
    if not has_benchmark:
        notes.append("no benchmark in the data: the benchmark row and every comparison with it are left out")
    metrics = {n: s.metrics(bpy, rf) for n, s in series[base].items()}
    over = overfitting_stats(series[base], bpy, cfg.walk_forward.pbo_splits, trial_sharpes, notes, rf)
    metrics[POLICY].update(deflated_sharpe=over["deflated_sharpe"], pbo=over["pbo"])
    return Aggregate(
        labels=[p.label for p in ordered],
        dates=dates,
        bars_per_year=bpy,
        cost_bps=base,
        symbols=list(first.symbols),
        series=series,
        metrics=metrics,
        per_period={p.label: {n: p.base[n].metrics(bpy, p.risk_free) for n in levels[base]} for p in ordered},
        stress_windows=stress_window_rows(dates, series[base], bpy, cfg.walk_forward.stress_windows, rf),
        symbol_sharpes=symbol_sharpes(
            np.concatenate([p.symbol_returns for p in ordered]), first.symbols, bpy
        ),
        actions=np.concatenate([p.actions for p in ordered]),
        overfitting=over,
        notes=notes,
        timing_edge=timing_edges(ordered),
        risk_free=rf,
        risk_free_label="; ".join(labels),
        has_benchmark=has_benchmark,
        exposure=[
            {"period": p.label, "arm": arm, **row}
            for p in ordered
            for arm, row in (p.info.get("exposure") or {}).items()
        ],
    )


def timing_edges(periods: Sequence[PeriodEvaluation]) -> dict[str, dict[str, float]]:
    """Drift-free selection edge of each backtested strategy over all periods (their per-step excess
    series, ``info["timing_excess"]``, concatenated): mean, t-statistic, steps. A strategy missing from
    any period is left out (its gate value is then missing: fail)."""
    series = [p.info.get("timing_excess") or {} for p in periods]
    names = set.intersection(*(set(s) for s in series)) if series else set()
    out = {}
    for name in sorted(names):
        excess = np.concatenate([np.asarray(s[name], dtype=np.float64) for s in series])
        mean, t = edge_t(excess)
        out[name] = {"mean": mean, "t": t, "steps": float(excess.size)}
    return out
