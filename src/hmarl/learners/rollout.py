"""Rollout storage: indices and small state, never market windows or embeddings.

Per step the buffer keeps the bar index of each env (the policy re-gathers the embedding / window and the
SL probabilities by it at update time) and the compact per-agent observation, in dtypes chosen for size:
float16 state, uint8 action counts, the 7-action mask bit-packed into one byte, uint8 actions, float32 for
what enters the loss: ~36 bytes per agent-step, so 128 envs x 2048 steps x 143 symbols take ~1.3 GiB
(GAE adds 8 bytes of advantages and returns per agent-step).
"""

from __future__ import annotations

import torch

from hmarl.agents.inputs import STATE_DTYPE, PolicyObs
from hmarl.env.actions import NUM_ACTIONS
from hmarl.env.rollout_memory import pack_mask, unpack_mask
from hmarl.env.spec import AGENT_FEATURES
from hmarl.learners.gae import gae


class StepBuffer:
    """What every PPO rollout keeps per (step, env): the action, its log-probability, the value estimate and
    the reward (one per agent: ``agents`` is the trailing shape, ``()`` for a single agent), and the episode
    flags GAE needs. Subclasses add the observations their policy re-reads at update time."""

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        agents: tuple[int, ...],
        action_dtype: torch.dtype,
        device: torch.device,
    ):
        t, n = num_steps, num_envs
        self.num_steps, self.num_envs = t, n
        self.action = torch.zeros(t, n, *agents, dtype=action_dtype, device=device)
        self.logprob = torch.zeros(t, n, *agents, device=device)
        self.value = torch.zeros(t, n, *agents, device=device)
        self.reward = torch.zeros(t, n, *agents, device=device)
        self.terminated = torch.zeros(t, n, dtype=torch.bool, device=device)  # ended in a terminal state
        self.ended = torch.zeros(
            t, n, dtype=torch.bool, device=device
        )  # terminated or truncated after this step
        self.valid = torch.zeros(
            t, n, dtype=torch.bool, device=device
        )  # False: an autoreset step (action ignored)

    @property
    def rows(self) -> int:
        """Flattened (step, env) rows: what the update epochs shuffle into minibatches."""
        return self.num_steps * self.num_envs

    def advantages(
        self, next_value: torch.Tensor, gamma: float, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and returns shaped like ``value`` (``next_value``: V of the observation after the
        last step)."""
        if self.value.dim() > 2:
            return gae(
                self.reward, self.value, next_value, self.terminated, self.ended, self.valid, gamma, lam
            )
        adv, ret = gae(
            self.reward.unsqueeze(-1),
            self.value.unsqueeze(-1),
            next_value.unsqueeze(-1),
            self.terminated,
            self.ended,
            self.valid,
            gamma,
            lam,
        )
        return adv.squeeze(-1), ret.squeeze(-1)

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in vars(self).values() if isinstance(v, torch.Tensor))


class RolloutBuffer(StepBuffer):
    """The symbol agents' rollout: per agent-step actions, log-probs, values and rewards, and the compact
    observation (bar index, state, counts, packed mask, env features) the policy acted on."""

    def __init__(self, num_steps: int, num_envs: int, num_symbols: int, env_dim: int, device: torch.device):
        super().__init__(num_steps, num_envs, (num_symbols,), torch.uint8, device)
        t, n, s = num_steps, num_envs, num_symbols
        z = torch.zeros
        kw = {"device": device}
        self.num_symbols = s
        self.bar = z(t, n, dtype=torch.int64, **kw)
        self.agent = z(t, n, s, len(AGENT_FEATURES), dtype=STATE_DTYPE, **kw)
        self.counts = z(t, n, s, NUM_ACTIONS, dtype=torch.uint8, **kw)
        self.mask_bits = z(t, n, s, dtype=torch.uint8, **kw)
        self.env = z(t, n, env_dim, dtype=STATE_DTYPE, **kw)
        self.executed = z(t, n, s, dtype=torch.uint8, **kw)

    def add_obs(
        self, t: int, obs: PolicyObs, action: torch.Tensor, logprob: torch.Tensor, value: torch.Tensor
    ) -> None:
        self.bar[t] = obs.bar
        self.agent[t] = obs.agent
        self.counts[t] = obs.counts
        self.mask_bits[t] = pack_mask(obs.mask)
        self.env[t] = obs.env
        self.action[t] = action
        self.logprob[t] = logprob
        self.value[t] = value

    def add_result(
        self,
        t: int,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        ended: torch.Tensor,
        valid: torch.Tensor,
        executed: torch.Tensor,
    ) -> None:
        self.reward[t] = reward
        self.terminated[t] = terminated
        self.ended[t] = ended
        self.valid[t] = valid
        self.executed[t] = executed

    def observations(self, rows: torch.Tensor) -> PolicyObs:
        """Observations of flattened ``(step x env)`` rows, in the form the policy acted on."""

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(0, 1).index_select(0, rows)

        return PolicyObs(
            pick(self.bar),
            pick(self.agent),
            pick(self.counts),
            unpack_mask(pick(self.mask_bits)),
            pick(self.env),
        )

    def flat(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1).index_select(0, rows)
