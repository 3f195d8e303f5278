"""The volatility-target prior of the master's caps (``env.master.cap_unit: vol_target``, env/vol_prior.py):
a directive's cap is a multiple of the volatility-targeted equal-weight slot, so cap 1 at risk 1 is the
classic rule and the master learns the deviation from it; opt-in, every other unit unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from env_fixtures import backends, env_config, make_store, reward_config
from hmarl.config import build_config
from hmarl.env.market import CLOSE, TRADABLE, MarketData
from hmarl.env.params import MasterGridConfig
from hmarl.env.vec_env import MarketEnv
from hmarl.evaluation.backtest import backtest
from hmarl.evaluation.exposure import exposure_funnel
from hmarl.evaluation.passive import vol_target_weights

REPO = Path(__file__).resolve().parents[1]
S = 5
NO_COSTS = {
    "commission_bps_round_trip": 0.0,
    "slippage_bps": 0.0,
    "slippage_vol_coef": 0.0,
    "slippage_impact_coef": 0.0,
}
CAPS = [1.0, 6.0]  # at a 5 % target on ~20 % volatility: ~0.25 of the slot, and above the slot (clamped)


def _master(**kw) -> MasterGridConfig:
    base = dict(
        cap_unit="vol_target", vol_target=0.05, vol_window=20, position_caps=CAPS, default=[2, 0, 2]
    )  # risk 1.0 (index 2 of the default multipliers), cap 1, aggressive: no open limit
    return MasterGridConfig(**{**base, **kw})


def _env(store, backend="torch", num_envs=3, **overrides) -> MarketEnv:
    cfg = env_config(
        **{"num_envs": num_envs, "initial_position": "allocation", "master": _master(), "backend": backend}
        | overrides
    )
    return MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), bar_range=(30, 200), seed=0)


def _independent_scale(market: MarketData, t: int, target: float, window: int) -> float:
    """target / annualized std of the equal-weight returns of bars t - window + 1 .. t, by hand."""
    close = market.table[CLOSE].double().numpy()
    tradable = market.table[TRADABLE].double().numpy() > 0.5
    rets = []
    for b in range(t - window + 1, t + 1):
        r = close[b] / close[b - 1] - 1.0
        rets.append(r[tradable[b]].mean())
    return target / (np.std(rets, ddof=1) * math.sqrt(market.bars_per_year))


def test_the_scale_is_the_target_over_the_trailing_equal_weight_volatility():
    store = make_store(num_bars=200, num_symbols=S, seed=1, untradable_fraction=0.1)
    env = _env(store)
    for t in (25, 60, 199):
        want = _independent_scale(env.market, t, 0.05, 20)
        assert float(env.cap_scale[t]) == pytest.approx(want, rel=1e-9)
    assert env.cap_ceiling == pytest.approx(1.0 / S)
    assert float(env.cap_scale[0]) == 1.0  # no volatility estimate yet: the plain slot multiple
    plain = _env(store, master=_master(cap_unit="equal_weight"))
    assert torch.equal(plain.cap_scale, torch.ones_like(plain.cap_scale)) and plain.cap_ceiling == math.inf


@pytest.mark.parametrize("backend", backends())
def test_caps_are_multiples_of_the_vol_targeted_slot_at_most_the_slot(backend):
    """The initial purchase buys each tradable symbol for ``equity x min(1, cap x target / sigma_t) / S``
    (no costs), and the agents' directive features carry that cap."""
    store = make_store(num_bars=200, num_symbols=S, seed=2)
    for cap, clamped in ((0, False), (1, True)):
        env = _env(store, backend, master=_master(default=[2, cap, 2]), **NO_COSTS)
        obs = env.reset(seed=3)
        close = env.market.table[CLOSE].index_select(0, env.t)
        scale = env.cap_scale.index_select(0, env.t)
        want = torch.clamp(CAPS[cap] * scale / S, max=1.0 / S)
        assert bool((CAPS[cap] * scale / S > 1.0 / S).all()) == clamped
        equity0 = env.cfg.initial_cash
        torch.testing.assert_close(env.shares * close, (equity0 * want).unsqueeze(1).expand(-1, S))
        torch.testing.assert_close(obs.directive_features[:, 1], want.float())


@pytest.mark.skipif(backends() == ["torch"], reason="no C compiler and no prebuilt kernel: torch only")
def test_native_step_matches_torch_under_the_vol_target_caps():
    """Random actions and master directives, the master's target rebalance, short episodes (autoresets
    buy at the scaled caps): both backends give the same rewards, observations and state."""
    store = make_store(num_bars=200, num_symbols=S, seed=4, untradable_fraction=0.1)
    runs = {}
    for backend in ("torch", "native"):
        env = _env(
            store, backend, num_envs=4, episode_length=12, master=_master(rebalance="target", interval=2)
        )
        env.reset(seed=4)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(60):
            env.set_directive(torch.randint(0, env.num_directives, (4,), generator=g))
            r = env.step(torch.randint(0, 7, (4, S), generator=g))
            out += [
                r.reward.flatten(),
                r.obs.agent.double().flatten(),
                r.obs.directive_features.double().flatten(),
            ]
            out += [r.info["rebalanced"].flatten(), r.obs.mask.double().flatten()]
        runs[backend] = (torch.cat(out), env.state())
    torch.testing.assert_close(runs["native"][0], runs["torch"][0], rtol=1e-9, atol=1e-9)
    for key, value in runs["torch"][1].items():
        torch.testing.assert_close(runs["native"][1][key], value, rtol=1e-9, atol=1e-9)


def test_cap_one_at_risk_one_with_the_rebalance_is_the_vol_target_rule():
    """All agents HOLD, the master's default directive (cap 1, risk 1) rebalances every bar: the desk's
    exposure follows the volatility-targeted baseline's (evaluation/passive.py) within the band."""
    bars = (40, 200)
    overrides = [
        "tracking.enabled=false",
        "env.initial_position=allocation",
        "env.master.cap_unit=vol_target",
        "env.master.vol_target=0.1",
        "env.master.position_caps=[0.5,0.75,1.0,1.5]",
        "env.master.default=[3,2,2]",  # risk 1.0, cap 1.0, aggressive
        "env.master.rebalance=target",
        "env.master.rebalance_band=0.05",
        "env.master.interval=1",
        "walk_forward.baselines.vol_target=0.1",
        "reward.pnl_baseline=hold",
    ]
    cfg = build_config(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    market = MarketData.from_store(make_store(num_bars=200, num_symbols=S, seed=5), cfg.env)
    bt = backtest(market, cfg, bars, lambda obs: torch.zeros(obs.mask.shape[:2], dtype=torch.int64), 1, 0)
    exposure = (bt.gross / bt.equity[1:])[:, 0]
    rule = vol_target_weights(market, cfg).sum(1)[bars[0] : bars[1] - 1]  # decided at t, held to t + 1
    assert 0.2 < rule.mean() < 0.9 and rule.std() > 0.05  # the rule moves: a real test of tracking
    assert np.abs(exposure - rule).mean() < 0.03
    assert np.corrcoef(exposure, rule)[0, 1] > 0.95
    f = exposure_funnel(bt, market, cfg, bars)  # the funnel's allocation is the scaled one
    assert f["slot_use"] == pytest.approx(1.0, abs=0.08)


def test_unknown_cap_unit_is_refused():
    with pytest.raises(ValueError, match="cap_unit"):
        MasterGridConfig(cap_unit="vol")
