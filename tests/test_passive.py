"""The passive baselines (volatility-targeted and trend-filtered equal weight): causal, at most fully
invested, charged the simulator's costs, and idle cash earns the cash rate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from hmarl.config import build_config
from hmarl.env.market import MarketData
from hmarl.evaluation.metrics import performance_metrics
from hmarl.evaluation.passive import passive_series, passive_weights, rebalanced_series, trend_weights

REPO = Path(__file__).resolve().parents[1]
BPY = 252.0


def _cfg(*overrides: str):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return build_config(raw, ["tracking.enabled=false", *overrides])


def _market(close: np.ndarray, cfg, tradable: np.ndarray | None = None) -> MarketData:
    t, s = close.shape
    return MarketData.from_arrays(
        open_=close,
        high=close * 1.01,
        low=close * 0.99,
        close=close,
        volume=np.full((t, s), 1e9),
        tradable=np.ones((t, s), bool) if tradable is None else tradable,
        benchmark=close.mean(1),
        regime=np.zeros((t, 1)),
        bars_per_year=BPY,
        symbols=[f"S{i}" for i in range(s)],
        timestamps=np.arange(t) * 86_400 * 10**9,
        cfg=cfg.env,
    )


def _random_walk(t: int, s: int, vol: float, seed: int = 0, drift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(drift, vol, size=(t, s)), axis=0))


def test_rules_are_causal_and_at_most_fully_invested():
    cfg = _cfg()
    close = _random_walk(600, 6, 0.03, seed=1)
    weights = passive_weights(_market(close, cfg), cfg)
    # a different future leaves every decision up to bar 400 unchanged
    future = close.copy()
    future[401:] *= np.exp(np.cumsum(np.random.default_rng(9).normal(0, 0.05, size=(199, 6)), axis=0))
    moved = passive_weights(_market(future, cfg), cfg)
    for name, w in weights.items():
        np.testing.assert_array_equal(w[:401], moved[name][:401], err_msg=name)
        assert (w >= 0).all() and (w.sum(1) <= 1.0 + 1e-12).all(), name
    # daily vol ~3 % x sqrt(252) / sqrt(6) ~ 19 % > 15 %: the vol target scales down, never up past 1
    exposure = weights["vol_target"][20:].sum(1)
    assert 0.4 < np.median(exposure) < 1.0 and exposure.max() <= 1.0 + 1e-12


def test_trend_filter_holds_equal_weight_only_while_the_index_is_above_its_average():
    cfg = _cfg("walk_forward.baselines.trend_window=50")
    # both symbols rise for 150 bars, then fall: the index crosses below its 50-bar average after the top
    path = np.r_[np.arange(150), 150 - np.arange(150) * 1.0]
    close = np.stack([100 * np.exp(0.01 * path), 80 * np.exp(0.01 * path)], 1)
    w = trend_weights(_market(close, cfg), cfg)
    assert (w[:49] == 0).all()  # fewer than 50 index levels: no average yet, cash
    np.testing.assert_allclose(w[49:150], 0.5)  # rising: above its average, equal slots
    index = np.exp(0.01 * path)  # the equal-weight index (both symbols move alike)
    sma = np.convolve(index, np.ones(50) / 50, mode="valid")  # sma[k] ends at bar k + 49
    above = index[49:] > sma
    np.testing.assert_array_equal(w[49:, 0] > 0, above)
    assert not above[-100:].any() and (w[-100:] == 0).all()  # falling: all cash


def test_costs_are_charged_and_cash_earns_the_rate():
    """Flat prices: with zero costs and rate, the book never changes; commission costs exactly what the
    trades pay; with a cash rate and nothing invested, equity compounds at annual / bars_per_year."""
    cfg = _cfg(
        "env.slippage_bps=0",
        "env.slippage_vol_coef=0",
        "env.slippage_impact_coef=0",
        "env.commission_bps_round_trip=0",
    )
    close = np.full((50, 4), 20.0)
    market = _market(close, cfg)
    weights = np.full((50, 4), 0.25)
    free = rebalanced_series(market, cfg, (10, 50), weights)
    np.testing.assert_allclose(free.equity, cfg.env.initial_cash)
    np.testing.assert_allclose(free.exposure, 1.0)
    paid_cfg = _cfg(
        "env.slippage_bps=0",
        "env.slippage_vol_coef=0",
        "env.slippage_impact_coef=0",
        "env.commission_bps_round_trip=20",
    )
    paid = rebalanced_series(_market(close, paid_cfg), paid_cfg, (10, 50), weights)
    fee = 10 / 1e4  # per leg
    # one entry (the whole cash pays notional x (1 + fee)); the band keeps it from trading again
    assert paid.costs[0] == pytest.approx(cfg.env.initial_cash * fee / (1 + fee), rel=1e-9)
    assert (paid.costs[1:] == 0).all() and paid.equity[-1] == pytest.approx(cfg.env.initial_cash / (1 + fee))
    rate_cfg = _cfg("env.cash_rate.annual=0.04")
    cash = rebalanced_series(_market(close, rate_cfg), rate_cfg, (10, 50), np.zeros((50, 4)))
    np.testing.assert_allclose(
        cash.equity, cfg.env.initial_cash * (1 + 0.04 / BPY) ** np.arange(40), rtol=1e-12
    )
    m = performance_metrics(cash.equity, BPY, risk_free=0.04 / BPY)
    assert m["sharpe"] == 0.0 and abs(m["excess_annual_return"]) < 1e-12


def test_vol_target_cuts_volatility_and_higher_costs_cost_more():
    cfg = _cfg()
    close = _random_walk(900, 8, 0.035, seed=3, drift=0.0003)
    market = _market(close, cfg)
    weights = passive_weights(market, cfg)
    by_cost = {
        c: passive_series(market, _cfg(f"env.commission_bps_round_trip={c}"), (300, 900), weights)
        for c in (0, 50)
    }
    for name in ("vol_target", "trend_filter"):
        cheap, dear = by_cost[0][name], by_cost[50][name]
        assert dear.costs.sum() > cheap.costs.sum() > 0 and dear.equity[-1] < cheap.equity[-1]
        assert dear.turnover.sum() == pytest.approx(cheap.turnover.sum(), rel=0.1)  # the same rule
    vt = performance_metrics(by_cost[0]["vol_target"].equity, BPY)
    ew_vol = (
        np.std(np.diff(close[300:], axis=0) / close[300:-1], axis=0, ddof=1).mean()
        / math.sqrt(8)
        * math.sqrt(BPY)
    )
    assert vt["volatility"] < 0.8 * ew_vol and vt["volatility"] == pytest.approx(0.15, abs=0.04)
