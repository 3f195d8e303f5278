"""Robustness tables of an aggregated evaluation: named stress windows and overfitting statistics.

Stress windows (``walk_forward.stress_windows``): every name's metrics on the bars inside each window.
A window the evaluated bars cover only in part is reported on the covered part, with the covered dates
and the share of the window's weekdays (trading days without a calendar: holidays count as covered or
not alike) they span -- "partial", never silently "not covered"; a window with fewer than 2 evaluated
bars inside is "not covered".

Overfitting statistics (documented choices):

- Probability of backtest overfitting (CSCV) runs over the trial matrix of every *strategy* evaluated on
  these bars: the policy and each baseline except the benchmark (the market series, not a strategy). It
  asks whether picking the best of them in sample holds up out of sample; with too few bars for
  ``walk_forward.pbo_splits`` blocks of >= 2 bars it is NaN, with a note.
- Deflated Sharpe ratio of the policy: against ``trial_sharpes`` when given (the gate passes the
  ``final/test_sharpe_agent`` of every run in this MLflow experiment, :func:`mlflow_trial_sharpes`, when
  tracking is on and >= 2 runs logged it); otherwise against the in-run trial set (the PBO strategies'
  annualized Sharpe ratios). The source is recorded in ``overfitting["trials_source"]`` and the notes.
- Both use returns in excess of the risk-free rate (the cash rate of each bar), like every Sharpe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import numpy as np

from hmarl.config import ConfigError, HmarlConfig
from hmarl.errors import DataError
from hmarl.evaluation.metrics import bar_returns, excess
from hmarl.evaluation.overfitting import deflated_sharpe, probability_of_overfitting, trial_metric_from_mlflow
from hmarl.evaluation.period import POLICY, PolicySeries

BENCHMARK = "benchmark"  # the market series: reported, never a trial
TRIAL_METRIC = "final/test_sharpe_agent"  # what train_symbols logs per run: the trials behind the DSR
WINDOW_METRICS = ("total_return", "annual_return", "sharpe", "max_drawdown")
_NAN = float("nan")


def _window_bounds(name: str, window: Sequence[str]) -> tuple[str, str]:
    try:
        start, end = (date.fromisoformat(str(d)[:10]).isoformat() for d in window)
    except ValueError as exc:
        raise ConfigError(f"walk_forward.stress_windows.{name}: {list(window)} ({exc})") from None
    if start > end:
        raise ConfigError(f"walk_forward.stress_windows.{name}: start {start} after end {end}")
    return start, end


def _weekdays(first: str, last: str) -> int:
    """Weekdays from ``first`` to ``last`` inclusive (ISO dates)."""
    return int(np.busday_count(first, np.datetime64(last) + np.timedelta64(1, "D")))


def stress_window_rows(
    dates: Sequence[str],
    series: Mapping[str, PolicySeries],
    bars_per_year: float,
    windows: Mapping[str, Sequence[str]],
    risk_free: np.ndarray | None = None,
) -> list[dict]:
    """Metrics of every name inside each window (ISO dates compared by day; see the module docstring).
    ``risk_free``: the per-bar rate of the ``len(dates) - 1`` bars (None: 0)."""
    days = [str(d)[:10] for d in dates]
    rf = np.zeros(len(days) - 1) if risk_free is None else np.asarray(risk_free, dtype=np.float64)
    rows = []
    for wname, window in windows.items():
        start, end = _window_bounds(wname, window)
        head = {"window": wname, "start": start, "end": end}
        inside = [i for i, d in enumerate(days) if start <= d <= end]
        if len(inside) < 2:
            rows.append({**head, "status": f"not covered (data {days[0]} .. {days[-1]})"})
            continue
        first, last = days[inside[0]], days[inside[-1]]
        full = days[0] <= start and days[-1] >= end
        share = 1.0 if full else _weekdays(first, last) / max(_weekdays(start, end), 1)
        cover = {
            "status": "covered" if full else f"partial ({first} .. {last}, {share:.0%} of the window)",
            "covered_from": first,
            "covered_to": last,
            "coverage": share,
        }
        lo, hi = max(inside[0] - 1, 0), inside[-1]  # the bar into the window's first day counts
        for name, s in series.items():
            part = PolicySeries(s.equity[lo : hi + 1], *(a[lo:hi] for a in (s.turnover, s.costs, s.exposure)))
            m = part.metrics(bars_per_year, rf[lo:hi])
            rows.append({**head, **cover, "name": name, **{k: m[k] for k in WINDOW_METRICS}})
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
    risk_free: np.ndarray | None = None,
) -> dict[str, float | str]:
    names = trial_names(list(series))
    returns = np.stack([bar_returns(series[n].equity) for n in names], axis=1)  # (T, N)
    returns = excess(returns, risk_free)
    in_run = np.array([series[n].metrics(bars_per_year, risk_free)["sharpe"] for n in names])
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
