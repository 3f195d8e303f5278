"""Classification metrics of 3-class probabilities, each next to the base-rate predictor's.

The base rate predicts the train class frequencies for every sample: a model that learned nothing
matches it (log loss, Brier) or sits at AUC 0.5.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (what the Mann-Whitney AUC needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(np.asarray(scores, dtype=np.float64))
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """One-vs-rest AUC averaged over the classes present with both outcomes."""
    aucs = [binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def direction_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Up vs down AUC of ``p_up - p_down`` among samples labelled up or down (flat ones left out)."""
    moved = labels != 1
    return binary_auc(probs[moved, 2] - probs[moved, 0], labels[moved] == 2)


def base_rate(labels: np.ndarray, num_classes: int = 3) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64) + 1.0  # Laplace: no zero class
    return counts / counts.sum()


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    n, c = probs.shape
    p = np.clip(probs, EPS, 1.0)
    onehot = np.eye(c)[labels]
    return {
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "log_loss": float(-np.log(p[np.arange(n), labels]).mean()),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()),
        "auc": macro_auc(probs, labels),
        "auc_direction": direction_auc(probs, labels),
    }


def classification_metrics(probs: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """Model scores, base-rate scores (``base_*``) and the sample count ``n``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return {"n": 0.0}
    base = np.broadcast_to(np.asarray(prior, dtype=np.float64), probs.shape)
    out = _scores(probs, labels)
    out.update({f"base_{k}": v for k, v in _scores(base, labels).items()})
    out["n"] = float(len(labels))
    return out


def log_loss_gain(
    probs: np.ndarray, labels: np.ndarray, prior: np.ndarray, clusters: np.ndarray
) -> tuple[float, float]:
    """Mean log-loss improvement over the base rate and its standard error, clustered by ``clusters``
    (e.g. the bar: symbols of one bar share market moves, so they are not independent samples)."""
    n = len(labels)
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(n), labels], EPS, 1.0)
    q = np.clip(
        np.broadcast_to(np.asarray(prior, dtype=np.float64), probs.shape)[np.arange(n), labels], EPS, 1.0
    )
    gain = np.log(p) - np.log(q)
    _, idx = np.unique(clusters, return_inverse=True)
    sums = np.bincount(idx, weights=gain)
    counts = np.bincount(idx)
    # ratio estimator: SE of sum(gain)/n with cluster totals as the independent units
    resid = sums - counts * gain.mean()
    g = len(counts)
    se = np.sqrt(g / max(g - 1, 1) * (resid**2).sum()) / n
    return float(gain.mean()), float(se)


def bootstrap_se(
    metric, probs: np.ndarray, labels: np.ndarray, clusters: np.ndarray, reps: int = 200, seed: int = 0
) -> float:
    """Standard error of ``metric(probs, labels)`` by resampling whole clusters (e.g. bars)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(clusters == c) for c in np.unique(clusters)]
    values = []
    for _ in range(reps):
        pick = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        values.append(metric(probs[pick], labels[pick]))
    return float(np.nanstd(values, ddof=1))
