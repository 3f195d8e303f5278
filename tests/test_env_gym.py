"""Gymnasium front ends: the single-symbol env passes check_env; the vector env declares NEXT_STEP autoreset."""

from __future__ import annotations

import numpy as np
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from env_fixtures import env_config, make_store, reward_config
from hmarl.env.gym_api import MarketVectorEnv, SingleSymbolEnv
from hmarl.env.market import MarketData


def test_single_symbol_env_passes_check_env():
    store = make_store(num_bars=200, num_symbols=3, seed=2)
    env = SingleSymbolEnv(
        store,
        env_config(num_envs=1, episode_length=30),
        reward_config(),
        symbol=1,
        bar_range=(20, 200),
        window=8,
    )
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert env.observation_space.contains(obs)
    assert obs["window"].shape == (8, 4) and obs["mask"][0] == 1


def test_single_symbol_episode_runs_to_truncation():
    store = make_store(num_bars=200, num_symbols=2, seed=4)
    env = SingleSymbolEnv(store, env_config(num_envs=1, episode_length=25), reward_config(), window=8)
    obs, info = env.reset(seed=1)
    rng = np.random.default_rng(0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        action = int(rng.choice(np.flatnonzero(obs["mask"])))
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        assert np.isfinite(reward) and env.observation_space.contains(obs)
    assert truncated and steps == 25


def test_vector_env_spaces_and_next_step_autoreset():
    store = make_store(num_bars=200, num_symbols=4, seed=3)
    cfg = env_config(num_envs=3, episode_length=5)
    venv = MarketVectorEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=0)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = venv.reset(seed=1)
    assert venv.observation_space.contains(obs)
    hold = np.zeros((3, 4), dtype=np.int64)
    for _ in range(5):
        obs, reward, terminated, truncated, info = venv.step(hold)
        assert reward.shape == (3, 4) and venv.observation_space.contains(obs)
    assert truncated.all()
    # next step: the actions are ignored, every env starts a new episode, reward 0
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert not truncated.any() and (reward == 0).all() and (info["executed_action"] == 0).all()
    assert (obs["portfolio"][:, 5] == 0).all()  # episode_progress back to 0
