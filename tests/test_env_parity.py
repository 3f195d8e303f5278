"""The batched simulator computes what the slow per-symbol reference computes, step for step.

Random valid and invalid actions (sticky, so repetition limits trigger), several envs and symbols,
>= 1,000 steps, resets, cash-limited fills, untradable bars, leverage/financing in one variant.
Tolerance: float64 on both sides; values agree to rtol=1e-9, atol=1e-9 (in their own units); discrete
things (executed actions, masks, termination) agree exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from env_fixtures import backends, env_config, load_real_store, make_store, reward_config
from env_reference import ReferenceEnv
from hmarl.env.market import MarketData
from hmarl.env.params import MasterGridConfig
from hmarl.env.vec_env import MarketEnv

RTOL = ATOL = 1e-9


def _sticky_actions(rng, prev, mask, p_valid=0.6, p_repeat=0.4):
    n, s, _ = mask.shape
    uniform = rng.integers(0, 7, size=(n, s))
    # a random valid action per agent: argmax of random scores over allowed actions
    valid = np.argmax(np.where(mask, rng.random(mask.shape), -1.0), axis=2)
    pick = np.where(rng.random((n, s)) < p_valid, valid, uniform)
    return np.where(rng.random((n, s)) < p_repeat, prev, pick)


def _close(name, got, want, step):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} differs at step {step}")


def run_parity(store, env_cfg, reward_cfg, steps, bar_range=None, seed=3, cash_rate=None):
    market = MarketData.from_store(store, env_cfg)
    rng_range = bar_range or (0, market.num_bars)
    env = MarketEnv(market, env_cfg, reward_cfg, bar_range=rng_range, seed=seed)
    assert env.backend == env_cfg.backend
    ref = ReferenceEnv(
        market.table.numpy(),
        market.benchmark.numpy(),
        market.bars_per_year,
        env_cfg,
        reward_cfg,
        env.num_envs,
        (env.bar_lo, env.bar_hi),
        seed=seed,
        cash_rate=cash_rate,
    )
    obs, ref_obs = env.reset(), ref.reset()
    rng = np.random.default_rng(seed)
    prev = np.zeros((env.num_envs, env.num_symbols), dtype=np.int64)
    seen = {"forced": 0, "scaled": 0, "resets": 0, "executed_kinds": set()}
    for step in range(steps):
        np.testing.assert_array_equal(obs.mask.numpy(), ref_obs["mask"], err_msg=f"mask at step {step}")
        np.testing.assert_array_equal(obs.bar.numpy(), ref_obs["bar"], err_msg=f"bar at step {step}")
        _close("agent features", obs.agent.double().numpy(), ref_obs["agent"].astype(np.float32), step)
        np.testing.assert_array_equal(obs.action_counts.numpy(), ref_obs["action_counts"])
        actions = _sticky_actions(rng, prev, ref_obs["mask"])
        prev = actions
        res = env.step(torch.from_numpy(actions))
        want = ref.step(actions)
        ref_obs = want["obs"]
        np.testing.assert_array_equal(
            res.executed_action.numpy(), want["executed"], err_msg=f"executed at {step}"
        )
        np.testing.assert_array_equal(
            res.terminated.numpy(), want["terminated"], err_msg=f"terminated at {step}"
        )
        np.testing.assert_array_equal(
            res.truncated.numpy(), want["truncated"], err_msg=f"truncated at {step}"
        )
        _close("reward", res.reward.numpy(), want["reward"], step)
        _close("components", res.components.numpy(), want["components"], step)
        _close("master reward", res.master_reward.numpy(), want["master_reward"], step)
        _close("master components", res.master_components.numpy(), want["master_components"], step)
        kept = ~res.info["reset"].numpy()
        _close("cost", res.info["cost"].numpy()[kept], want["cost"][kept], step)
        state, ref_state = env.state(), ref.state()
        for key in ("cash", "equity", "shares", "entry"):
            _close(key, state[key].numpy(), ref_state[key], step)
        obs = res.obs
        seen["forced"] += int(res.info["forced_hold"].sum())
        seen["scaled"] += int((res.info["buy_scale"] < 1).sum())
        seen["resets"] += int(res.info["reset"].sum())
        seen["executed_kinds"] |= set(np.unique(want["executed"]).tolist())
    return seen


def _stress_env(**overrides):
    # large caps and fractions so cash runs out (pro-rata fills), short episodes (resets), small window
    master = MasterGridConfig(
        position_caps=[0.1, 0.2, 0.3, 0.4], max_open_fraction=[0.3, 0.6, 1.0], default=[2, 2, 1]
    )
    base = {
        "num_envs": 4,
        "episode_length": 120,
        "diversity_window": 10,
        "master": master,
        "max_drawdown": 0.25,
    }
    base.update(overrides)
    return env_config(**base)


@pytest.mark.parametrize("backend", backends())
def test_parity_synthetic_1000_steps(backend):
    store = make_store(num_bars=400, num_symbols=6, seed=11, vol=0.04, untradable_fraction=0.03)
    seen = run_parity(store, _stress_env(backend=backend), reward_config(weights="seed_formula"), steps=1000)
    # the run exercised the rules it claims to check
    assert seen["forced"] > 0 and seen["scaled"] > 0 and seen["resets"] > 0
    assert seen["executed_kinds"] == set(range(7))


@pytest.mark.parametrize("backend", backends())
def test_parity_leverage_and_financing(backend):
    store = make_store(num_bars=300, num_symbols=5, seed=5, vol=0.03)
    cfg = _stress_env(allow_leverage=True, max_leverage=2.0, financing_rate=0.5, num_envs=3, backend=backend)
    seen = run_parity(store, cfg, reward_config(), steps=300)
    assert seen["resets"] > 0


@pytest.mark.parametrize("backend", backends())
def test_parity_cash_rate_series(backend):
    """Positive cash earns a time-varying annual rate (a T-bill-like series, percent, NaN before its first
    value: the constant there); big caps leave cash idle and then run it out, so both signs occur."""
    store = make_store(num_bars=300, num_symbols=5, seed=7, vol=0.03)
    t = np.arange(store.num_bars)
    percent = np.where(t < 40, np.nan, 2.0 + 3.0 * np.sin(t / 25.0) ** 2)  # 2-5 %
    store = dataclasses.replace(store, cash_rate=percent)
    cfg = _stress_env(
        allow_leverage=True,
        max_leverage=1.5,
        num_envs=3,
        backend=backend,
        cash_rate={"annual": 0.01, "series": "tbill__rate", "percent": True},
    )
    annual = np.where(np.isnan(percent), 0.01, percent / 100.0)
    seen = run_parity(store, cfg, reward_config(), steps=300, cash_rate=annual)
    assert seen["resets"] > 0
    market = MarketData.from_store(store, cfg)
    np.testing.assert_allclose(market.cash_rate.numpy(), annual / market.bars_per_year)


def test_idle_cash_earns_the_rate():
    """An all-HOLD account compounds exactly at annual / bars_per_year per bar (simple rate per bar)."""
    store = make_store(num_bars=60, num_symbols=3, seed=2)
    cfg = env_config(num_envs=2, episode_length=50, cash_rate={"annual": 0.05})
    market = MarketData.from_store(store, cfg)
    env = MarketEnv(market, cfg, reward_config(), bar_range=(0, 60))
    env.reset()
    steps = 20
    for _ in range(steps):
        res = env.step(torch.zeros(2, 3, dtype=torch.int64))
    want = cfg.initial_cash * (1.0 + 0.05 / market.bars_per_year) ** steps
    np.testing.assert_allclose(env.state()["cash"].numpy(), want, rtol=1e-12)
    assert (res.info["financing"] < 0).all()  # interest earned is negative financing


@pytest.mark.parametrize("backend", backends())
def test_parity_real_data(backend):
    store = load_real_store(num_symbols=8)
    if store is None:
        pytest.skip("real data not present in ../shared/data")
    cfg = _stress_env(num_envs=3, episode_length=250, backend=backend)
    seen = run_parity(store, cfg, reward_config(), steps=1000, bar_range=(2000, store.num_bars))
    assert seen["resets"] > 0 and seen["scaled"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends())
def test_parity_real_data_long(backend):
    store = load_real_store(num_symbols=20)
    if store is None:
        pytest.skip("real data not present in ../shared/data")
    cfg = _stress_env(num_envs=6, episode_length=500, backend=backend, diversity_window=50)
    run_parity(store, cfg, reward_config(weights="seed_formula"), steps=3000, bar_range=(60, store.num_bars))
