"""Performance metrics checked against independent, loop-based computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hmarl.errors import DataError
from hmarl.evaluation.metrics import (
    METRIC_NAMES,
    drawdown_reduction,
    finite_or_none,
    max_drawdown,
    performance_metrics,
    sharpe_ratio,
)


def _path(seed: int, n: int = 300, drift: float = 0.0005, vol: float = 0.01) -> np.ndarray:
    r = np.random.default_rng(seed).normal(drift, vol, n)
    return 100.0 * np.concatenate([[1.0], np.cumprod(1 + r)])


def _brute_max_drawdown(v) -> float:
    worst = 0.0
    for i in range(len(v)):
        for j in range(i, len(v)):
            worst = max(worst, (v[i] - v[j]) / v[i])
    return worst


def _direct(v, bpy):
    """Textbook formulas with Python lists and loops."""
    r = [v[i] / v[i - 1] - 1 for i in range(1, len(v))]
    n = len(r)
    mean = sum(r) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))
    down = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / n)
    annual = (v[-1] / v[0]) ** (bpy / n) - 1
    wins = sum(x > 0 for x in r) / sum(x != 0 for x in r)
    return {
        "sharpe": mean / sd * math.sqrt(bpy),
        "sortino": mean / down * math.sqrt(bpy),
        "volatility": sd * math.sqrt(bpy),
        "annual_return": annual,
        "total_return": v[-1] / v[0] - 1,
        "win_rate": wins,
    }


@pytest.mark.parametrize("bpy", [252.0, 252.0 * 6.5, 365.0 * 24])
def test_single_path_matches_direct_formulas(bpy):
    v = _path(1)
    v[40:60] = v[40]  # a flat stretch: zero returns count for the mean, not for the win rate
    m = performance_metrics(v, bpy)
    ref = _direct(list(v), bpy)
    for key, expected in ref.items():
        assert m[key] == pytest.approx(expected, rel=1e-10), key
    mdd = _brute_max_drawdown(list(v))
    assert m["max_drawdown"] == pytest.approx(mdd, rel=1e-12)
    assert m["calmar"] == pytest.approx(ref["annual_return"] / mdd, rel=1e-10)
    assert m["num_bars"] == len(v) - 1
    assert sharpe_ratio(v, bpy) == pytest.approx(ref["sharpe"], rel=1e-10)
    assert max_drawdown(v) == pytest.approx(mdd, rel=1e-12)


def test_annualization_follows_bars_per_year():
    v = _path(2)
    daily, hourly = performance_metrics(v, 252.0), performance_metrics(v, 252.0 * 7)
    assert hourly["sharpe"] / daily["sharpe"] == pytest.approx(math.sqrt(7), rel=1e-12)
    assert hourly["volatility"] / daily["volatility"] == pytest.approx(math.sqrt(7), rel=1e-12)
    # same growth over 1/7 of the time: (1 + a_h) = (1 + a_d) ** 7
    assert 1 + hourly["annual_return"] == pytest.approx((1 + daily["annual_return"]) ** 7, rel=1e-10)


def test_vectorized_over_paths_equals_each_path():
    paths = np.stack([_path(s) for s in range(6)], axis=1).reshape(301, 2, 3)
    turnover = np.abs(np.random.default_rng(9).normal(0, 0.1, (300, 2, 3)))
    costs = turnover * 0.001 * 100.0
    exposure = np.random.default_rng(10).uniform(0, 1, (300, 2, 3))
    m = performance_metrics(paths, 252.0, turnover, costs, exposure)
    for i in range(2):
        for j in range(3):
            one = performance_metrics(
                paths[:, i, j], 252.0, turnover[:, i, j], costs[:, i, j], exposure[:, i, j]
            )
            for key in METRIC_NAMES:
                assert m[key].shape == (2, 3)
                assert m[key][i, j] == pytest.approx(one[key], rel=1e-12), key
    assert sharpe_ratio(paths, 252.0).shape == (2, 3)


def test_turnover_costs_exposure_definitions():
    v = np.array([100.0, 101.0, 99.0, 102.0, 102.0])
    m = performance_metrics(
        v, 50.0, turnover=[0.5, 0.0, 1.0, 0.5], costs=[0.1, 0.0, 0.2, 0.1], exposure=[1.0, 0.5, 0.5, 0.0]
    )
    assert m["turnover"] == pytest.approx(0.5 * 50.0)  # mean per bar x bars per year
    assert m["costs_paid"] == pytest.approx(0.4 / 100.0)  # fraction of the initial equity
    assert m["exposure"] == pytest.approx(0.5)
    assert math.isnan(performance_metrics(v, 50.0)["turnover"])  # not given: not defined


def test_flat_equity_is_zero_not_nan():
    m = performance_metrics(np.full(50, 1e6), 252.0)
    for key in ("total_return", "annual_return", "volatility", "sharpe", "sortino", "max_drawdown", "calmar"):
        assert m[key] == 0.0, key
    assert math.isnan(m["win_rate"])  # no bar won or lost
    assert sharpe_ratio(np.full((50, 3), 7.0), 12.0).tolist() == [0.0, 0.0, 0.0]


def test_gain_against_no_risk_is_infinite_not_a_huge_number():
    v = 100.0 * 1.001 ** np.arange(30)  # constant return: float noise in the std must not blow up
    m = performance_metrics(v, 252.0)
    assert m["sharpe"] == math.inf and m["sortino"] == math.inf and m["calmar"] == math.inf
    assert m["max_drawdown"] == 0.0 and m["win_rate"] == 1.0


def test_too_few_bars_give_nan():
    one = performance_metrics([100.0, 110.0], 252.0)  # one return: no dispersion estimate
    assert one["total_return"] == pytest.approx(0.1) and one["max_drawdown"] == 0.0
    assert math.isnan(one["sharpe"]) and math.isnan(one["sortino"]) and math.isnan(one["volatility"])
    none = performance_metrics([100.0], 252.0)
    assert none["num_bars"] == 0 and all(math.isnan(none[k]) for k in METRIC_NAMES if k != "num_bars")
    assert math.isnan(sharpe_ratio([100.0, 110.0], 252.0))


def test_bad_input_is_a_data_error():
    with pytest.raises(DataError, match="bar 2"):
        performance_metrics([100.0, 101.0, float("nan"), 99.0], 252.0)
    with pytest.raises(DataError, match="bar 1, path"):
        performance_metrics(np.array([[1.0, 1.0], [1.0, 0.0]]), 252.0)
    with pytest.raises(DataError, match="bars_per_year"):
        performance_metrics([1.0, 1.1, 1.2], 0.0)
    with pytest.raises(DataError, match="turnover"):
        performance_metrics([1.0, 1.1, 1.2], 252.0, turnover=[0.1])


def test_drawdown_reduction_and_json_helper():
    assert drawdown_reduction(0.17, 0.20) == pytest.approx(0.15)
    assert math.isnan(drawdown_reduction(0.1, 0.0)) and math.isnan(drawdown_reduction(float("nan"), 0.2))
    assert finite_or_none(float("inf")) is None and finite_or_none(2) == 2.0
