"""How much of a backtest's Sharpe is selection luck.

- Deflated Sharpe ratio (Bailey & López de Prado, 2014, "The Deflated Sharpe Ratio"): the probability
  that the true Sharpe exceeds ``SR0``, the Sharpe the best of ``N`` unskilled trials would show by chance:

      SR0 = sqrt(V[SR_n]) * ((1 - g) * Z^-1(1 - 1/N) + g * Z^-1(1 - 1/(N e)))      g = Euler-Mascheroni
      DSR = Z((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))

  Sharpe ratios here are per observation (not annualized); ``kurt`` is the plain (non-excess) kurtosis.
  :func:`deflated_sharpe` takes a return series and the annualized Sharpe ratios of all trials (as logged
  in MLflow, read by :func:`trial_metric_from_mlflow`) and converts with ``bars_per_year``.
- Probability of backtest overfitting by combinatorially symmetric cross-validation (Bailey, Borwein,
  López de Prado & Zhu, 2017): split the ``(T, N)`` trial return matrix into ``S`` equal row blocks; for
  every choice of ``S/2`` blocks as in-sample, pick the trial with the best in-sample Sharpe and find its
  relative rank ``w`` among all trials out-of-sample; ``lambda = log(w / (1 - w))``. PBO is the share of
  choices with ``lambda <= 0`` (the in-sample winner lands at or below the out-of-sample median). Pure
  noise gives PBO near 0.5 (selection carries no information), genuine skill near 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from statistics import NormalDist

import numpy as np

from hmarl.errors import DataError
from hmarl.evaluation.metrics import check_bars_per_year, ratio

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """``SR0``: expected maximum Sharpe of ``n_trials`` unskilled trials whose Sharpe ratios have variance
    ``sharpe_variance`` (same units as the Sharpe ratios). One trial: no selection, 0."""
    if n_trials < 1:
        raise DataError(f"n_trials must be >= 1 (got {n_trials})")
    if not sharpe_variance >= 0:
        raise DataError(f"sharpe_variance must be >= 0 (got {sharpe_variance})")
    if n_trials == 1:
        return 0.0
    g = EULER_GAMMA
    z = (1 - g) * _NORMAL.inv_cdf(1 - 1 / n_trials) + g * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    return math.sqrt(sharpe_variance) * z


def probabilistic_sharpe_ratio(
    sharpe: float, benchmark: float, n_obs: int, skew: float, kurtosis: float
) -> float:
    """P(true Sharpe > ``benchmark``) for a per-observation Sharpe estimated from ``n_obs`` returns with the
    given skewness and (non-excess) kurtosis. NaN when undefined (fewer than 2 observations, or moments
    that make the variance term non-positive)."""
    var_term = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2
    if n_obs < 2 or not math.isfinite(var_term) or var_term <= 0:
        return float("nan")
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var_term))


@dataclass(frozen=True)
class DeflatedSharpe:
    dsr: float  # probability that the true Sharpe beats the best-of-N luck threshold
    sharpe: float  # annualized Sharpe of the evaluated returns
    sharpe_threshold: float  # SR0, annualized
    n_trials: int
    trial_sharpe_std: float  # annualized std of the trials' Sharpe ratios
    n_obs: int
    skew: float
    kurtosis: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def return_moments(returns) -> tuple[float, float, float, int]:
    """Per-observation Sharpe, skewness and non-excess kurtosis (population moments, as in the paper)."""
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    if not np.isfinite(r).all():
        raise DataError(f"returns: {int((~np.isfinite(r)).sum())} non-finite value(s)")
    n = r.size
    if n < 2:
        return float("nan"), float("nan"), float("nan"), n
    sd = r.std(ddof=1)
    sharpe = float(ratio(r.mean(), sd))
    dev = r - r.mean()
    m2 = float(np.mean(dev**2))
    if m2 <= 1e-24:  # constant returns: the normal-case moments keep the formula defined
        return sharpe, 0.0, 3.0, n
    return sharpe, float(np.mean(dev**3) / m2**1.5), float(np.mean(dev**4) / m2**2), n


def deflated_sharpe(returns, trial_sharpes, bars_per_year: float) -> DeflatedSharpe:
    """DSR of a per-bar return series against all trials' annualized Sharpe ratios (this one included).

    Non-finite trial values are ignored (a trial that logged no Sharpe); with a single trial there is no
    selection and the DSR is the probabilistic Sharpe ratio against 0."""
    bpy = check_bars_per_year(bars_per_year)
    trials = np.asarray(trial_sharpes, dtype=np.float64).reshape(-1)
    trials = trials[np.isfinite(trials)]
    n_trials = max(int(trials.size), 1)
    annual_var = float(trials.var(ddof=1)) if trials.size >= 2 else 0.0
    sr0 = expected_max_sharpe(n_trials, annual_var / bpy)  # per-observation units
    sharpe, skew, kurt, n = return_moments(returns)
    dsr = probabilistic_sharpe_ratio(sharpe, sr0, n, skew, kurt) if math.isfinite(sharpe) else float("nan")
    scale = math.sqrt(bpy)
    return DeflatedSharpe(dsr, sharpe * scale, sr0 * scale, n_trials, math.sqrt(annual_var), n, skew, kurt)


# --------------------------------------------------------------------------- PBO (CSCV)
@dataclass(frozen=True)
class PBOResult:
    pbo: float  # share of in/out-of-sample splits where the in-sample winner ranks <= median out-of-sample
    logits: np.ndarray  # lambda of each split
    is_sharpe: np.ndarray  # in-sample Sharpe (per observation) of each split's winner
    oos_sharpe: np.ndarray  # its out-of-sample Sharpe
    prob_oos_loss: float  # share of splits where the winner loses money out of sample
    n_splits: int
    n_trials: int


def _block_sharpe(sums: np.ndarray, sq: np.ndarray, n: np.ndarray) -> np.ndarray:
    mean = sums / n
    var = np.maximum(sq - n * mean**2, 0.0) / (n - 1)
    return ratio(mean, np.sqrt(var))


def probability_of_overfitting(returns, n_splits: int = 16) -> PBOResult:
    """PBO by CSCV over a ``(T, N)`` matrix: row t holds every trial's return in bar t.

    ``n_splits`` (S) must be even; ``T // S`` rows go in each block (the last ``T % S`` rows are dropped so
    blocks are equal); every one of the C(S, S/2) in-sample choices is evaluated (vectorized)."""
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise DataError(f"returns: expected a (bars, trials) matrix with >= 2 trials, got shape {m.shape}")
    if n_splits < 2 or n_splits % 2:
        raise DataError(f"n_splits must be an even number >= 2 (got {n_splits})")
    rows = m.shape[0] // n_splits
    if rows < 2:
        raise DataError(f"returns: {m.shape[0]} bars are too few for {n_splits} blocks of >= 2 bars")
    if not np.isfinite(m).all():
        raise DataError("returns: non-finite values in the trial matrix")
    blocks = m[: rows * n_splits].reshape(n_splits, rows, -1)
    sums, sq = blocks.sum(1), (blocks**2).sum(1)  # (S, N)
    chosen = np.zeros((math.comb(n_splits, n_splits // 2), n_splits))
    for i, combo in enumerate(combinations(range(n_splits), n_splits // 2)):
        chosen[i, list(combo)] = 1.0
    half = float(rows * n_splits // 2)
    is_perf = _block_sharpe(chosen @ sums, chosen @ sq, half)  # (C, N)
    oos_perf = _block_sharpe((1 - chosen) @ sums, (1 - chosen) @ sq, half)
    best = is_perf.argmax(1)
    picked = oos_perf[np.arange(best.size), best][:, None]
    n = m.shape[1]
    # average rank (1 = worst) of the winner among all trials out of sample, ties split evenly
    rank = (oos_perf < picked).sum(1) + ((oos_perf == picked).sum(1) + 1) / 2
    w = rank / (n + 1)
    logits = np.log(w / (1 - w))
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        is_sharpe=is_perf[np.arange(best.size), best],
        oos_sharpe=picked[:, 0],
        prob_oos_loss=float(np.mean(picked[:, 0] < 0)),
        n_splits=int(best.size),
        n_trials=n,
    )


# --------------------------------------------------------------------------- trials from MLflow
def trial_metric_from_mlflow(
    tracking_uri: str, experiment: str, metric: str = "sharpe", filter_string: str = ""
) -> np.ndarray:
    """Latest value of ``metric`` of every active run in ``experiment`` that logged it (all pages).

    Uses an explicit client (like :class:`hmarl.tracking.Tracker`), so no global MLflow state changes.
    An unknown experiment is a DataError: the deflated Sharpe needs the trials that produced the model."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise DataError(f"MLflow experiment {experiment!r} not found at {tracking_uri}")
    values: list[float] = []
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        values.extend(r.data.metrics[metric] for r in page if metric in r.data.metrics)
        token = page.token
        if not token:
            break
    return np.asarray(values, dtype=np.float64)
