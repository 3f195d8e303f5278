"""Gymnasium front ends of :class:`hmarl.env.vec_env.MarketEnv` (numpy in, numpy out).

- :class:`MarketVectorEnv`: a ``gymnasium.vector.VectorEnv`` over ``num_envs`` accounts; each
  sub-env's action is a ``MultiDiscrete([7] * num_symbols)``; rewards are per symbol agent
  ``(num_envs, num_symbols)``; autoreset mode ``NEXT_STEP`` (declared in ``metadata``).
- :class:`SingleSymbolEnv`: one account trading one symbol, a plain ``gymnasium.Env`` whose observation
  includes the normalized feature window; it passes ``gymnasium.utils.env_checker.check_env``.

Trainers should use ``MarketEnv`` directly (torch tensors, no host copies); these wrappers exist for
interoperability and checks.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from hmarl.data.store import FeatureStore
from hmarl.data.windows import FeatureWindows
from hmarl.env.actions import NUM_ACTIONS, grid_size
from hmarl.env.market import MarketData
from hmarl.env.params import EnvConfig, RewardConfig
from hmarl.env.spec import AGENT_FEATURES, DIRECTIVE_FEATURES, PORTFOLIO_FEATURES, Observation
from hmarl.env.vec_env import MarketEnv

_BOUND = 1e9  # finite bounds (check_env warns on infinite ones); observations are clipped to them


def _box(*shape: int) -> spaces.Box:
    return spaces.Box(-_BOUND, _BOUND, shape=shape, dtype=np.float32)


class MarketVectorEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, market: MarketData, env_cfg: EnvConfig, reward_cfg: RewardConfig, **kwargs):
        self.env = MarketEnv(market, env_cfg, reward_cfg, **kwargs)
        self.num_envs = self.env.num_envs
        s, r = self.env.num_symbols, market.regime.shape[1]
        self.single_action_space = spaces.MultiDiscrete(np.full(s, NUM_ACTIONS))
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = spaces.Dict(
            {
                "bar": spaces.Box(0, market.num_bars - 1, shape=(), dtype=np.int64),
                "agent": _box(s, len(AGENT_FEATURES)),
                "portfolio": _box(len(PORTFOLIO_FEATURES)),
                "regime": _box(r),
                "directive": spaces.Discrete(grid_size(env_cfg)),
                "directive_features": _box(len(DIRECTIVE_FEATURES)),
                "action_counts": spaces.Box(
                    0, env_cfg.diversity_window, shape=(s, NUM_ACTIONS), dtype=np.uint8
                ),
                "mask": spaces.MultiBinary((s, NUM_ACTIONS)),
            }
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return _numpy_obs(self.env.reset(seed=seed)), {}

    def step(self, actions):
        res = self.env.step(torch.as_tensor(np.asarray(actions), dtype=torch.int64, device=self.env.device))
        info = {
            "executed_action": res.executed_action.cpu().numpy(),
            "components": res.components.cpu().numpy(),
            "master_reward": res.master_reward.cpu().numpy(),
        }
        return (
            _numpy_obs(res.obs),
            res.reward.cpu().numpy(),
            res.terminated.cpu().numpy(),
            res.truncated.cpu().numpy(),
            info,
        )


def _numpy_obs(obs: Observation) -> dict[str, np.ndarray]:
    out = {
        name: getattr(obs, name).cpu().numpy()
        for name in (
            "bar",
            "agent",
            "portfolio",
            "regime",
            "directive",
            "directive_features",
            "action_counts",
            "mask",
        )
    }
    out["mask"] = out["mask"].astype(np.int8)
    return out


class SingleSymbolEnv(gym.Env):
    """One account trading symbol ``symbol`` of ``store`` inside ``bar_range`` (a fold's bars)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        store: FeatureStore,
        env_cfg: EnvConfig,
        reward_cfg: RewardConfig,
        *,
        symbol: int = 0,
        fold: int = 0,
        bar_range: tuple[int, int] | None = None,
        window: int | None = None,
    ):
        market = MarketData.from_store(store, env_cfg, symbols=[symbol])
        self.features = FeatureWindows(store, fold, window)
        self.env = MarketEnv(
            market, env_cfg, reward_cfg, num_envs=1, bar_range=bar_range, min_history=self.features.min_bar
        )
        w, f = self.features.window, store.features.shape[2]
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = spaces.Dict(
            {
                "window": _box(w, f),
                "state": _box(len(AGENT_FEATURES) + len(PORTFOLIO_FEATURES)),
                "mask": spaces.MultiBinary(NUM_ACTIONS),
            }
        )

    def _obs(self, obs: Observation) -> dict[str, np.ndarray]:
        window = self.features.windows(obs.bar)[0, 0]
        state = torch.cat([obs.agent[0, 0], obs.portfolio[0]])
        return {
            "window": window.clamp(-_BOUND, _BOUND).cpu().numpy(),
            "state": state.clamp(-_BOUND, _BOUND).cpu().numpy(),
            "mask": obs.mask[0, 0].cpu().numpy().astype(np.int8),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:  # draw the simulator's seed from the env's np_random for reproducibility
            seed = int(self.np_random.integers(2**31))
        obs = self.env.reset(seed=seed)
        return self._obs(obs), {"action_mask": obs.mask[0, 0].cpu().numpy().astype(np.int8)}

    def step(self, action):
        res = self.env.step(torch.tensor([[int(action)]], dtype=torch.int64, device=self.env.device))
        info = {
            "executed_action": int(res.executed_action[0, 0]),
            "components": res.components[:, 0, 0].cpu().numpy(),
            "action_mask": res.obs.mask[0, 0].cpu().numpy().astype(np.int8),
        }
        return (
            self._obs(res.obs),
            float(res.reward[0, 0]),
            bool(res.terminated[0]),
            bool(res.truncated[0]),
            info,
        )
