"""The master's utility component (reward.master_weights.utility): r - risk_aversion / 2 x r^2 of the
portfolio's bar return, on every backend, weighted into the master's reward like the other components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from env_fixtures import backends, env_config, make_store, reward_config
from hmarl.env.market import MarketData
from hmarl.env.params import MASTER_COMPONENTS
from hmarl.env.vec_env import MarketEnv

UTILITY = MASTER_COMPONENTS.index("utility")


@pytest.mark.parametrize("backend", backends())
def test_utility_is_the_mean_variance_score_of_the_bar_return(backend):
    env_cfg = env_config(backend=backend, num_envs=3, episode_length=40)
    weights = {"risk_adjusted": 0.0, "diversification": 0.0, "excess_return": 0.0, "utility": 1.0}
    reward_cfg = reward_config(master_weights=weights, risk_aversion=40.0)
    market = MarketData.from_store(make_store(num_bars=120, vol=0.05), env_cfg)
    env = MarketEnv(market, env_cfg, reward_cfg, seed=1)
    obs = env.reset()
    gen = torch.Generator().manual_seed(0)
    seen_penalty = False
    for _ in range(30):
        before = env.equity.clone()
        logits = torch.randn(obs.mask.shape, generator=gen).masked_fill(~obs.mask, -1e9)
        res = env.step(logits.argmax(-1))
        ended = res.terminated | res.truncated
        r = (env.equity / before - 1.0)[~ended]
        want = r - 0.5 * 40.0 * r.square()
        got = res.master_components[UTILITY][~ended]
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.master_reward[~ended].numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        seen_penalty |= bool((r.abs() > 1e-4).any())
        obs = res.obs
    assert seen_penalty  # the accounts moved: the variance term was exercised


def test_utility_weight_zero_leaves_the_master_reward_unchanged():
    env_cfg = env_config(num_envs=2, episode_length=30)
    market = MarketData.from_store(make_store(num_bars=80), env_cfg)
    rewards = []
    for weights in ({"excess_return": 1.0}, {"excess_return": 1.0, "utility": 0.0}):
        env = MarketEnv(market, env_cfg, reward_config(master_weights=weights), seed=2)
        obs = env.reset()
        out = []
        for _ in range(10):
            res = env.step(torch.where(obs.mask[..., 3], 3, 0))
            out.append(res.master_reward.clone())
            obs = res.obs
        rewards.append(torch.stack(out))
    assert torch.equal(rewards[0], rewards[1])
