"""The master's directive sets the exposure of what is held (``env.master.rebalance``, env/rebalance.py):
at a bar where the master is due, held positions its agents HOLD are trimmed to (``trim``, ``target``) or
raised to (``target``) ``initial_fraction x allocation`` when outside the band; opt-in, off by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from env_fixtures import backends, env_config, make_store, reward_config
from hmarl.config import build_config
from hmarl.env.actions import Action, directive_index
from hmarl.env.market import ADV, CLOSE, OPEN, SIGMA, TRADABLE, MarketData
from hmarl.env.params import REWARD_COMPONENTS, EnvConfig, MasterGridConfig
from hmarl.env.vec_env import MarketEnv
from hmarl.evaluation.backtest import backtest
from hmarl.evaluation.exposure import exposure_funnel

REPO = Path(__file__).resolve().parents[1]

COST = REWARD_COMPONENTS.index("cost")
RISKS = [0.5, 0.9, 1.0, 1.2, 1.5]  # risk index 2 (1.0) is the default
CAP = 0.15  # of equity: 5 symbols at risk 1.0 hold 75 % of it, at risk 1.5 would need 112.5 %
S = 5


def _master(rebalance: str, interval: int = 3, band: float = 0.25) -> MasterGridConfig:
    return MasterGridConfig(
        risk_multipliers=RISKS,
        position_caps=[CAP],
        default=[2, 0, 2],  # risk 1.0, aggressive mode: no open-position limit
        interval=interval,
        rebalance=rebalance,
        rebalance_band=band,
    )


def _env(store, rebalance="trim", backend="auto", num_envs=4, seed=0, interval=3, band=0.25, **overrides):
    cfg = env_config(
        **{
            "num_envs": num_envs,
            "initial_position": "allocation",
            "master": _master(rebalance, interval, band),
            "backend": backend,
            **overrides,
        }
    )
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=seed)
    assert env.backend == backend or backend == "auto"
    return env


def _risk(env, r: int) -> torch.Tensor:
    return torch.full((env.num_envs,), directive_index(env.cfg, r, 0, 2), dtype=torch.int64)


def _hold(env) -> torch.Tensor:
    return torch.zeros(env.num_envs, env.num_symbols, dtype=torch.int64)


def _bars(env):
    """Rows (5, N, S) of the decision bar t and the fill bar t + 1."""
    table = env.market.table
    return table.index_select(1, env.t), table.index_select(1, env.t + 1)


def _slip(env, row0, notional):
    fp = env.fill_params
    return (fp.slip_base + fp.slip_vol * row0[SIGMA] + fp.slip_impact * notional / row0[ADV]).clamp(
        max=fp.slip_max
    )


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("mode", ["trim", "target"])
def test_a_cut_directive_trims_held_positions_to_the_target_at_the_next_open(backend, mode):
    store = make_store(num_bars=60, num_symbols=S, seed=1, untradable_fraction=0.15)
    env = _env(store, mode, backend)
    env.reset(seed=3)
    obs = env.set_directive(_risk(env, 0))  # the master cuts risk 1.0 -> 0.5 at its due bar (k = 0)
    assert obs.master_due.all()
    row0, row1 = _bars(env)
    shares0, cash0, fp = env.shares.clone(), env.cash.clone(), env.fill_params
    value0 = shares0 * row0[CLOSE]
    target = (env.equity * 0.5 * CAP).unsqueeze(1)  # initial_fraction 1
    trimmed = (shares0 > 0) & (row1[TRADABLE] > 0)
    assert trimmed.sum() >= 10 and ((shares0 > 0) & ~trimmed).any()  # some held symbol cannot trade at t+1
    assert (value0[trimmed] > 1.9 * target.expand_as(value0)[trimmed]).all()

    res = env.step(_hold(env))
    q_sell = torch.where(trimmed, shares0 * (1 - target / value0.clamp_min(1e-12)), 0.0)
    torch.testing.assert_close(env.shares, shares0 - q_sell)
    kept = (env.shares * row0[CLOSE])[trimmed]  # the position is worth the target at the decision close
    torch.testing.assert_close(kept, target.expand_as(value0)[trimmed], rtol=1e-12, atol=1e-6)
    slip = _slip(env, row0, q_sell * row0[CLOSE])
    proceeds = q_sell * row1[OPEN] * (1 - slip) * (1 - fp.fee)
    cost = q_sell * row1[OPEN] - proceeds
    torch.testing.assert_close(res.info["cost"], cost)
    assert (cost[trimmed] > 0).all()
    torch.testing.assert_close(env.cash, cash0 + proceeds.sum(1))  # cash earns 0 here
    torch.testing.assert_close(res.info["rebalanced"], -q_sell * row1[OPEN])
    assert (res.info["rebalanced"][trimmed] < 0).all() and (res.info["rebalanced"][~trimmed] == 0).all()
    assert (res.executed_action == Action.HOLD).all()  # the trade is the master's, not the agent's
    assert (res.components[COST][trimmed] < 0).all()
    assert (env.last == 0).all() and (env.window.recent_counts()[..., 1:] == 0).all()


@pytest.mark.parametrize("backend", backends())
def test_target_raises_positions_below_the_band_pro_rata_to_the_cash(backend):
    store = make_store(num_bars=60, num_symbols=S, seed=2)
    for risk, pro_rata in ((2, False), (4, True)):  # to 1.0 (cash suffices) and 1.5 (it does not)
        env = _env(store, "target", backend, num_envs=3)
        env.reset(seed=5, directive=int(_risk(env, 0)[0]))  # bought at risk 0.5
        env.set_directive(_risk(env, risk))
        row0, row1 = _bars(env)
        shares0, value0 = env.shares.clone(), env.shares * row0[CLOSE]
        target = (env.equity * RISKS[risk] * CAP).unsqueeze(1)
        assert (value0 < 0.75 * target).all()
        res = env.step(_hold(env))
        bought = res.info["rebalanced"]
        scale = res.info["buy_scale"]
        torch.testing.assert_close(bought, (env.shares - shares0) * row1[OPEN])
        torch.testing.assert_close(bought, (target - value0) * scale.unsqueeze(1))  # one factor per account
        want = target - value0
        slip = _slip(env, row0, want)
        torch.testing.assert_close(res.info["cost"], bought * ((1 + slip) * (1 + env.fill_params.fee) - 1))
        assert (res.executed_action == Action.HOLD).all()
        if pro_rata:
            assert (scale < 0.9).all()
            torch.testing.assert_close(env.cash, torch.zeros_like(env.cash), rtol=0, atol=1e-6)
        else:
            assert (scale == 1).all() and (env.cash > 1e5).all()


@pytest.mark.parametrize("backend", backends())
def test_trim_never_buys(backend):
    store = make_store(num_bars=60, num_symbols=S, seed=2)
    env = _env(store, "trim", backend, num_envs=2)
    env.reset(seed=5, directive=int(_risk(env, 0)[0]))
    env.set_directive(_risk(env, 4))
    shares0 = env.shares.clone()
    res = env.step(_hold(env))
    assert (res.info["rebalanced"] == 0).all() and torch.equal(env.shares, shares0)


@pytest.mark.parametrize("backend", backends())
def test_an_agents_own_order_wins_over_the_rebalance(backend):
    store = make_store(num_bars=60, num_symbols=S, seed=3)
    env = _env(store, "target", backend, num_envs=2)
    env.reset(seed=1)
    env.set_directive(_risk(env, 0))
    shares0 = env.shares.clone()
    a = _hold(env)
    a[:, 0] = Action.SELL_ALL
    a[:, 1] = Action.SELL_PARTIAL
    res = env.step(a)
    assert (env.shares[:, 0] == 0).all()  # sold all, not to the target
    torch.testing.assert_close(env.shares[:, 1], shares0[:, 1] * 0.5)  # the agent's half, not the trim
    assert (res.info["rebalanced"][:, :2] == 0).all() and (res.info["rebalanced"][:, 2:] < 0).all()
    assert res.executed_action[:, 0].eq(Action.SELL_ALL).all()
    assert res.executed_action[:, 1].eq(Action.SELL_PARTIAL).all()


@pytest.mark.parametrize("backend", backends())
def test_no_rebalance_where_the_master_is_not_due(backend):
    """Start in cash, buy 75 % of the allocation at k = 0: the positions sit below the band at k = 1, 2
    (not due: untouched) and are raised to the target at k = 3 (due)."""
    store = make_store(num_bars=60, num_symbols=S, seed=4, vol=0.005)
    env = _env(store, "target", backend, num_envs=2, band=0.1, initial_position="cash")
    env.reset(seed=2)
    res = env.step(torch.full((2, S), int(Action.BUY_LARGE)))
    assert (res.info["rebalanced"] == 0).all() and (env.shares > 0).all()
    for k in (1, 2):
        assert (env.k == k).all() and not res.obs.master_due.any()
        shares = env.shares.clone()
        value = env.shares * env.market.table[CLOSE].index_select(0, env.t)
        assert (value < 0.9 * env.equity.unsqueeze(1) * CAP).all()  # below the band
        res = env.step(_hold(env))
        assert (res.info["rebalanced"] == 0).all() and torch.equal(env.shares, shares)
    assert res.obs.master_due.all()
    res = env.step(_hold(env))
    assert (res.info["rebalanced"] > 0).all()


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("mode", ["trim", "target"])
def test_nothing_trades_within_the_band(backend, mode):
    store = make_store(num_bars=60, num_symbols=S, seed=5)
    for risk in (1, 3):  # 1.0 -> 0.9 (value / target 1.11) and 1.0 -> 1.2 (0.83): inside 1 +- 0.25
        env = _env(store, mode, backend, num_envs=2)
        env.reset(seed=0)
        env.set_directive(_risk(env, risk))
        shares0 = env.shares.clone()
        res = env.step(_hold(env))
        assert (res.info["rebalanced"] == 0).all() and (res.info["cost"] == 0).all()
        assert torch.equal(env.shares, shares0)


def _random_env(store, mode, backend, seed=4):
    return _env(store, mode, backend, num_envs=4, seed=seed, interval=2, episode_length=7)


def _random_run(env, steps=40, seed=4):
    """Random actions and a random directive at every due bar, short episodes (autoresets). Returns the
    step outputs stacked, the final state and how many fills were the master's rebalance."""
    env.reset(seed=seed)
    g = torch.Generator().manual_seed(1)
    out, rebalanced = [], 0
    for _ in range(steps):
        env.set_directive(torch.randint(0, env.num_directives, (env.num_envs,), generator=g))
        a = torch.randint(0, 7, (env.num_envs, S), generator=g)
        a = torch.where(torch.rand(env.num_envs, S, generator=g) < 0.6, 0, a)  # mostly HOLD
        r = env.step(a)
        live = ~r.info["reset"].unsqueeze(1)  # a reset env's info means nothing
        rebalanced += int((r.info["rebalanced"] * live != 0).sum())
        out.append(
            torch.cat(
                [
                    r.reward.flatten(),
                    r.components.flatten(),
                    (r.info["cost"] * live).flatten(),
                    (r.info["rebalanced"] * live).flatten(),
                    r.obs.agent.double().flatten(),
                    r.obs.portfolio.double().flatten(),
                    r.executed_action.double().flatten(),
                ]
            )
        )
    return torch.stack(out), env.state(), rebalanced


@pytest.mark.skipif(backends() == ["torch"], reason="no C compiler and no prebuilt kernel: torch only")
@pytest.mark.parametrize("mode", ["trim", "target"])
def test_native_step_matches_torch_with_rebalance_on(mode):
    store = make_store(num_bars=80, num_symbols=S, seed=10, untradable_fraction=0.1)
    ref, ref_state, count = _random_run(_random_env(store, mode, "torch"))
    assert count >= 20  # the rebalance was exercised
    out, state, _ = _random_run(_random_env(store, mode, "native"))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    for key, value in ref_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-9)


def test_same_seed_same_numbers_and_none_is_the_default():
    store = make_store(num_bars=80, num_symbols=S, seed=11, untradable_fraction=0.1)
    first, second = (_random_run(_random_env(store, "target", "auto")) for _ in range(2))
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    for key, value in first[1].items():
        torch.testing.assert_close(second[1][key], value, rtol=0, atol=0)
    # `none` is the default and trades nothing for the master: the same numbers as a grid without the key
    assert EnvConfig().master.rebalance == "none" and MasterGridConfig().rebalance_band == 0.25
    none = _random_run(_random_env(store, "none", "torch"))
    assert none[2] == 0 and first[2] > 0 and not torch.equal(none[0], first[0])
    grid = MasterGridConfig(risk_multipliers=RISKS, position_caps=[CAP], default=[2, 0, 2], interval=2)
    cfg = env_config(
        num_envs=4, initial_position="allocation", episode_length=7, backend="torch", master=grid
    )
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=4)
    torch.testing.assert_close(_random_run(env)[0], none[0], rtol=0, atol=0)


def test_backtest_reports_the_rebalanced_notional_at_due_bars_only():
    """An all-HOLD backtest under the default directive (interval 5), invested at the start: with a narrow
    band the drifting positions are brought back to the target at due steps (k % 5 == 0) only; the
    notional is part of the traded notional; zeros under ``none``."""
    overrides = [
        "tracking.enabled=false",
        "env.initial_position=allocation",
        "env.master.cap_unit=equal_weight",
        "env.master.position_caps=[0.5,0.5,0.5,0.5]",
        "env.master.default=[3,3,2]",  # risk 1.0, aggressive: the accounts keep cash for the raises
        "env.master.rebalance_band=0.02",
    ]
    base = build_config(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    market = MarketData.from_store(make_store(num_bars=80, num_symbols=S, seed=6), base.env)
    bars, hold = (10, 80), lambda obs: torch.zeros(obs.mask.shape[:2], dtype=torch.int64)
    out = {}
    for mode in ("none", "target"):
        master = base.env.master.model_copy(update={"rebalance": mode})
        cfg = base.model_copy(update={"env": base.env.model_copy(update={"master": master})})
        out[mode] = backtest(market, cfg, bars, hold, 2, 0)
    assert out["none"].rebalanced.shape == (bars[1] - bars[0] - 1, 2) and (out["none"].rebalanced == 0).all()
    rb = out["target"].rebalanced
    due = np.arange(len(rb)) % 5 == 0
    assert (rb[due[:, None].repeat(2, 1)] > 0).sum() >= 10 and (rb[~due] == 0).all()
    assert (rb <= out["target"].traded + 1e-6).all()  # all-HOLD: after step 0 every trade is the master's
    np.testing.assert_allclose(rb[1:], out["target"].traded[1:], rtol=1e-9, atol=1e-6)
    # the exposure funnel reports it: the master's trades per bar relative to the equity they started from
    turnover = {m: exposure_funnel(bt, market, base, bars)["rebalance_turnover"] for m, bt in out.items()}
    assert turnover["none"] == 0.0
    expected = (rb / out["target"].equity[:-1]).mean()
    assert turnover["target"] > 0 and turnover["target"] == pytest.approx(expected, rel=1e-12)
