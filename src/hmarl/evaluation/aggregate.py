"""Evaluated periods (walk-forward folds, or one dataset) joined into one evaluation.

Periods are concatenated in bar order: each series' equity is chained through its bar returns (so fold k+1
starts where fold k ended), per-bar costs are rescaled to the chained equity (a fraction of the bar's
opening equity is what carries over), turnover and exposure are per bar already. Every metric then comes
from :func:`hmarl.evaluation.metrics.performance_metrics` with the periods' own ``bars_per_year``.

Overfitting statistics (documented choices):

- Probability of backtest overfitting (CSCV) runs over the trial matrix of every *strategy* evaluated on
  these bars: the policy and each baseline except the benchmark (the market series, not a strategy). It
  asks whether picking the best of them in sample holds up out of sample; with too few bars for
  ``walk_forward.pbo_splits`` blocks of >= 2 bars it is NaN, with a note.
- Deflated Sharpe ratio of the policy: against ``trial_sharpes`` when given (the gate passes the
  ``final/test_sharpe_agent`` of every run in this MLflow experiment, :func:`mlflow_trial_sharpes`, when
  tracking is on and >= 2 runs logged it); otherwise against the in-run trial set (the PBO strategies'
  annualized Sharpe ratios). The source is recorded in ``overfitting["trials_source"]`` and the notes.

    agg = aggregate([PeriodEvaluation.load(p) for p in folders], cfg)
    write_evaluation("reports/gate", agg, title="Walk-forward evaluation", gate=verdict.to_dict())
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from hmarl.config import ConfigError, HmarlConfig
from hmarl.env.actions import ACTION_NAMES
from hmarl.errors import DataError
from hmarl.evaluation.metrics import bar_returns, check_bars_per_year, edge_t, ratio
from hmarl.evaluation.overfitting import deflated_sharpe, probability_of_overfitting, trial_metric_from_mlflow
from hmarl.evaluation.period import BASELINES, POLICY, PeriodEvaluation, PolicySeries
from hmarl.evaluation.report import EvaluationResult, render_markdown, write_report
from hmarl.io import write_json, write_text

BENCHMARK = "benchmark"  # the market series: reported, never a trial
TRIAL_METRIC = "final/test_sharpe_agent"  # what train_symbols logs per run: the trials behind the DSR
_WINDOW_METRICS = ("total_return", "annual_return", "sharpe", "max_drawdown")
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
    stress_windows: list[dict]  # one row per (covered window, name); one "not covered" row otherwise
    symbol_sharpes: dict[str, float]  # symbol -> Sharpe of the policy's P&L in that symbol
    actions: np.ndarray  # (T, 7) executed action shares of the policy per bar
    overfitting: dict[str, float | str]
    notes: list[str] = field(default_factory=list)
    timing_edge: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> mean, t, steps

    @property
    def names(self) -> list[str]:
        return list(self.series[self.cost_bps])

    @property
    def equity(self) -> dict[str, np.ndarray]:
        return {n: s.equity for n, s in self.series[self.cost_bps].items()}

    def cost_stress(self) -> dict[float, dict[str, dict[str, float]]]:
        """cost level -> name -> metrics of the whole evaluation at that cost."""
        return {c: {n: s.metrics(self.bars_per_year) for n, s in by.items()} for c, by in self.series.items()}

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


def _window_bounds(name: str, window: Sequence[str]) -> tuple[str, str]:
    try:
        start, end = (date.fromisoformat(str(d)[:10]).isoformat() for d in window)
    except ValueError as exc:
        raise ConfigError(f"walk_forward.stress_windows.{name}: {list(window)} ({exc})") from None
    if start > end:
        raise ConfigError(f"walk_forward.stress_windows.{name}: start {start} after end {end}")
    return start, end


def stress_window_rows(
    dates: Sequence[str],
    series: Mapping[str, PolicySeries],
    bars_per_year: float,
    windows: Mapping[str, Sequence[str]],
) -> list[dict]:
    """Metrics of every name inside each window the dates cover entirely (ISO dates compared by day);
    a window the data does not cover gets one row saying so."""
    days = [str(d)[:10] for d in dates]
    rows = []
    for wname, window in windows.items():
        start, end = _window_bounds(wname, window)
        head = {"window": wname, "start": start, "end": end}
        inside = [i for i, d in enumerate(days) if start <= d <= end]
        if not (days[0] <= start and days[-1] >= end) or len(inside) < 2:
            rows.append({**head, "status": f"not covered (data {days[0]} .. {days[-1]})"})
            continue
        lo, hi = max(inside[0] - 1, 0), inside[-1]  # the bar into the window's first day counts
        for name, s in series.items():
            part = PolicySeries(s.equity[lo : hi + 1], *(a[lo:hi] for a in (s.turnover, s.costs, s.exposure)))
            m = part.metrics(bars_per_year)
            rows.append({**head, "status": "covered", "name": name, **{k: m[k] for k in _WINDOW_METRICS}})
    return rows


def trial_names(names: Sequence[str]) -> list[str]:
    """The strategies that form the PBO trial matrix (and the in-run DSR trial set)."""
    return [POLICY] + [n for n in names if n not in (POLICY, BENCHMARK)]


def overfitting_stats(
    series: Mapping[str, PolicySeries],
    bars_per_year: float,
    pbo_splits: int,
    trial_sharpes: np.ndarray | None,
    notes: list[str],
) -> dict[str, float | str]:
    names = trial_names(list(series))
    returns = np.stack([bar_returns(series[n].equity) for n in names], axis=1)  # (T, N)
    in_run = np.array([series[n].metrics(bars_per_year)["sharpe"] for n in names])
    if trial_sharpes is None:
        trials, source = in_run, "in-run"
        notes.append(
            f"deflated Sharpe: trials are the {len(names)} strategies evaluated here ({', '.join(names)})"
        )
    else:
        trials, source = np.asarray(trial_sharpes, dtype=np.float64), "mlflow"
        notes.append(f"deflated Sharpe: {trials.size} trials from MLflow ({TRIAL_METRIC})")
    dsr = deflated_sharpe(returns[:, 0], trials, bars_per_year)
    out: dict[str, float | str] = {
        "deflated_sharpe": dsr.dsr,
        "dsr_sharpe_threshold": dsr.sharpe_threshold,
        "dsr_n_trials": float(dsr.n_trials),
        "dsr_trial_sharpe_std": dsr.trial_sharpe_std,
        "trials_source": source,
        "pbo": _NAN,
        "pbo_prob_oos_loss": _NAN,
        "pbo_n_trials": float(len(names)),
        "pbo_splits": float(pbo_splits),
    }
    if len(names) < 2 or returns.shape[0] // pbo_splits < 2:
        notes.append(
            f"PBO not computed: {returns.shape[0]} bars x {len(names)} strategies are too few for "
            f"walk_forward.pbo_splits={pbo_splits} blocks of >= 2 bars and >= 2 strategies"
        )
        return out
    pbo = probability_of_overfitting(returns, pbo_splits)
    out.update(pbo=pbo.pbo, pbo_prob_oos_loss=pbo.prob_oos_loss)
    notes.append(f"PBO (CSCV, {pbo_splits} blocks) over the strategies {', '.join(names)}")
    return out


def mlflow_trial_sharpes(cfg: HmarlConfig, notes: list[str] | None = None) -> np.ndarray | None:
    """Annualized test Sharpe of every run in this experiment (``final/test_sharpe_agent``), or None when
    tracking is off, the experiment is unknown or fewer than 2 runs logged it (then the caller uses the
    in-run trial set)."""
    if not cfg.tracking.enabled:
        return None
    try:
        values = trial_metric_from_mlflow(cfg.tracking.mlflow_uri, cfg.tracking.experiment, TRIAL_METRIC)
    except DataError as exc:
        values, reason = np.array([]), str(exc)
    else:
        reason = f"{np.isfinite(values).sum()} runs logged {TRIAL_METRIC}"
    values = values[np.isfinite(values)]
    if values.size >= 2:
        return values
    if notes is not None:
        notes.append(f"MLflow trials not used ({reason}; < 2 trials): in-run trial set instead")
    return None


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
    metrics = {n: s.metrics(bpy) for n, s in series[base].items()}
    over = overfitting_stats(series[base], bpy, cfg.walk_forward.pbo_splits, trial_sharpes, notes)
    metrics[POLICY].update(deflated_sharpe=over["deflated_sharpe"], pbo=over["pbo"])
    return Aggregate(
        labels=[p.label for p in ordered],
        dates=dates,
        bars_per_year=bpy,
        cost_bps=base,
        symbols=list(first.symbols),
        series=series,
        metrics=metrics,
        per_period={p.label: {n: p.base[n].metrics(bpy) for n in levels[base]} for p in ordered},
        stress_windows=stress_window_rows(dates, series[base], bpy, cfg.walk_forward.stress_windows),
        symbol_sharpes=symbol_sharpes(
            np.concatenate([p.symbol_returns for p in ordered]), first.symbols, bpy
        ),
        actions=np.concatenate([p.actions for p in ordered]),
        overfitting=over,
        notes=notes,
        timing_edge=timing_edges(ordered),
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


# --------------------------------------------------------------------------- outputs
def json_safe(obj):
    """Nested dicts/lists with NaN/inf floats as None (JSON has no NaN) and numpy scalars as floats."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def metrics_document(agg: Aggregate) -> dict[str, dict[str, float]]:
    """``metrics.json``: name -> every metric at the base cost (the policy's with deflated_sharpe, pbo)."""
    return {n: dict(m) for n, m in agg.metrics.items()}


def evaluation_result(
    agg: Aggregate,
    title: str,
    *,
    gate: dict | None = None,
    seeds: list[dict] | None = None,
    entropy: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    reward_contributions: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
) -> EvaluationResult:
    return EvaluationResult(
        title=title,
        bars_per_year=agg.bars_per_year,
        equity=agg.equity,
        policy=POLICY,
        dates=agg.dates,
        metrics=agg.metrics,
        action_mix={a: agg.actions[:, i] for i, a in enumerate(ACTION_NAMES[: agg.actions.shape[1]])},
        entropy=dict(entropy or {}),
        reward_contributions=dict(reward_contributions or {}),
        symbol_sharpes=agg.symbol_sharpes,
        folds=agg.fold_rows(),
        cost_stress=agg.cost_stress_rows(),
        stress_windows=agg.stress_windows,
        seeds=list(seeds or []),
        overfitting=dict(agg.overfitting),
        gate=gate,
        notes=[*agg.notes, *notes],
    )


def write_evaluation(
    out_dir: str | Path,
    agg: Aggregate,
    title: str = "Evaluation",
    *,
    gate: dict | None = None,
    seeds: list[dict] | None = None,
    entropy: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    reward_contributions: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Write ``metrics.json``, ``evaluation.json`` (tables), ``report.html`` and ``report.md`` into
    ``out_dir``; the gate-only parts (verdict, seeds, entropy, reward contributions) are optional.
    Returns the metrics document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(agg)
    write_json(out / "metrics.json", json_safe(doc))
    result = evaluation_result(
        agg,
        title,
        gate=gate,
        seeds=seeds,
        entropy=entropy,
        reward_contributions=reward_contributions,
        notes=notes,
    )
    write_json(
        out / "evaluation.json",
        json_safe(
            {
                "periods": agg.labels,
                "first": agg.dates[0],
                "last": agg.dates[-1],
                "bars_per_year": agg.bars_per_year,
                "cost_bps": agg.cost_bps,
                "per_period": agg.per_period,
                "cost_stress": agg.cost_stress_rows(),
                "stress_windows": agg.stress_windows,
                "symbol_sharpes": agg.symbol_sharpes,
                "overfitting": agg.overfitting,
                "notes": result.notes,
            }
        ),
    )
    write_report(out / "report.html", result)
    write_text(out / "report.md", render_markdown(result))
    return doc
