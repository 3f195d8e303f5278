"""Deflated Sharpe ratio and PBO (CSCV): the papers' formulas, selection luck, and trials read from MLflow."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from hmarl.config import TrackingConfig
from hmarl.errors import DataError
from hmarl.evaluation.overfitting import (
    deflated_sharpe,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_overfitting,
    return_moments,
    trial_metric_from_mlflow,
)
from hmarl.tracking import Tracker

BPY = 252.0


def test_paper_numerical_example():
    """Bailey & López de Prado (2014), section 6: N = 100 trials, V[SR] = 1/2 (annualized), T = 1250 daily
    returns, annualized SR 2.5, skew -3, kurtosis 10 -> SR0 ~ 0.1132 per day and DSR ~ 0.9004."""
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_expected_max_sharpe_against_scipy_formula():
    g = np.euler_gamma
    for n, var in [(2, 0.01), (10, 0.0004), (1000, 0.1)]:
        expected = math.sqrt(var) * (
            (1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * np.e))
        )
        assert expected_max_sharpe(n, var) == pytest.approx(expected, rel=1e-9)
    assert expected_max_sharpe(1, 0.3) == 0.0  # one trial: nothing was selected


def test_psr_hand_example_and_moments():
    # SR 0.1 over 101 normal returns: Z(0.1 * 10 / sqrt(1 + 2/4 * 0.01))
    expected = stats.norm.cdf(1.0 / math.sqrt(1.005))
    assert probabilistic_sharpe_ratio(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(expected, rel=1e-9)
    r = np.random.default_rng(0).standard_t(5, 2000) * 0.01
    sharpe, skew, kurt, n = return_moments(r)
    assert skew == pytest.approx(stats.skew(r), rel=1e-9)
    assert kurt == pytest.approx(stats.kurtosis(r, fisher=False), rel=1e-9)
    assert sharpe == pytest.approx(r.mean() / r.std(ddof=1), rel=1e-12) and n == 2000


def _annual_sharpe(r: np.ndarray) -> np.ndarray:
    return r.mean(0) / r.std(0, ddof=1) * math.sqrt(BPY)


def test_lucky_trial_is_deflated_a_skilled_one_is_not():
    rng = np.random.default_rng(42)
    noise = rng.normal(0.0, 0.01, (500, 200))
    sharpes = _annual_sharpe(noise)
    lucky = noise[:, sharpes.argmax()]
    # alone (no selection accounted for) it looks significant ...
    assert deflated_sharpe(lucky, [sharpes.max()], BPY).dsr > 0.95
    # ... against the 200 trials that produced it, it does not
    d = deflated_sharpe(lucky, sharpes, BPY)
    assert d.dsr < 0.8 and d.n_trials == 200
    assert d.sharpe == pytest.approx(sharpes.max(), rel=1e-9) and d.sharpe_threshold > 1.0
    skilled = rng.normal(0.003, 0.01, 500)  # annualized Sharpe ~ 4.8
    strong = deflated_sharpe(skilled, np.append(sharpes, _annual_sharpe(skilled[:, None])), BPY)
    assert strong.dsr > 0.99


def test_dsr_ignores_trials_without_a_value_and_rejects_bad_returns():
    r = np.random.default_rng(1).normal(0.001, 0.01, 300)
    a = deflated_sharpe(r, [0.5, 1.0, 1.5], BPY)
    b = deflated_sharpe(r, [0.5, float("nan"), 1.0, 1.5], BPY)
    assert a == b
    with pytest.raises(DataError, match="non-finite"):
        deflated_sharpe(np.array([0.01, np.nan, 0.0]), [1.0], BPY)


def _naive_pbo(m: np.ndarray, s: int) -> float:
    """CSCV with loops: Sharpe with np.std, rank by sorting."""
    rows = m.shape[0] // s
    blocks = [m[i * rows : (i + 1) * rows] for i in range(s)]
    overfit = []
    for combo in combinations(range(s), s // 2):
        train = np.vstack([blocks[i] for i in combo])
        test = np.vstack([blocks[i] for i in range(s) if i not in combo])
        is_sr = train.mean(0) / train.std(0, ddof=1)
        oos_sr = test.mean(0) / test.std(0, ddof=1)
        best = int(np.argmax(is_sr))
        order = list(np.argsort(oos_sr))  # worst first
        w = (order.index(best) + 1) / (m.shape[1] + 1)
        overfit.append(math.log(w / (1 - w)) <= 0)
    return float(np.mean(overfit))


def test_pbo_matches_a_loop_implementation():
    m = np.random.default_rng(3).normal(0, 0.01, (83, 7))  # 83 rows: the 3 trailing ones are dropped
    res = probability_of_overfitting(m, n_splits=8)
    assert res.n_splits == math.comb(8, 4) and res.n_trials == 7
    assert res.pbo == pytest.approx(_naive_pbo(m[:80], 8))


def test_pbo_noise_is_a_coin_flip_skill_is_near_zero():
    rng = np.random.default_rng(7)
    noise_pbos = [probability_of_overfitting(rng.normal(0, 0.01, (1000, 30)), 10).pbo for _ in range(6)]
    assert 0.3 < float(np.mean(noise_pbos)) < 0.7  # the in-sample winner is a random pick out of sample
    skill = rng.normal(0, 0.01, (1000, 30))
    skill[:, 4] += 0.004  # one trial with a real edge (per-bar Sharpe 0.4)
    res = probability_of_overfitting(skill, 10)
    assert res.pbo < 0.02 and res.prob_oos_loss < 0.02


def test_pbo_rejects_bad_shapes():
    with pytest.raises(DataError, match="even"):
        probability_of_overfitting(np.zeros((100, 3)), 5)
    with pytest.raises(DataError, match="too few"):
        probability_of_overfitting(np.zeros((10, 3)), 8)
    with pytest.raises(DataError, match=">= 2 trials"):
        probability_of_overfitting(np.zeros((100, 1)), 4)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite store for the module: runs with and without the metric, and a second experiment."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlruns.db"
    logged = [0.4, 1.3, -0.2, 0.9]
    for exp, values in (("trials", logged), ("other", [5.0])):
        cfg = TrackingConfig(mlflow_uri=uri, artifact_root=str(folder / exp), experiment=exp)
        for v in values:
            with Tracker(cfg).start_run("trial") as tr:
                tr.log_metrics({"sharpe": v, "total_return": v / 10})
        with Tracker(cfg).start_run("no-sharpe") as tr:
            tr.log_metrics({"total_return": 0.1})
    return uri, logged


def test_mlflow_reader_returns_every_trial_of_the_experiment(mlflow_store):
    uri, logged = mlflow_store
    assert sorted(trial_metric_from_mlflow(uri, "trials", "sharpe").tolist()) == sorted(logged)
    assert trial_metric_from_mlflow(uri, "other", "sharpe").tolist() == [5.0]
    assert len(trial_metric_from_mlflow(uri, "trials", "total_return")) == 5
    with pytest.raises(DataError, match="not found"):
        trial_metric_from_mlflow(uri, "missing")


def test_dsr_with_trials_from_mlflow(mlflow_store):
    uri, logged = mlflow_store
    r = np.random.default_rng(5).normal(0.001, 0.01, 400)
    d = deflated_sharpe(r, trial_metric_from_mlflow(uri, "trials"), BPY)
    assert d.n_trials == len(logged)
    assert d.trial_sharpe_std == pytest.approx(np.std(logged, ddof=1))
