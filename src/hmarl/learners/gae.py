"""Generalized advantage estimation over a rollout with Gymnasium next-step autoreset.

Step ``t`` of env ``n``: the agents acted on ``obs_t`` and got ``reward_t``; ``ended_t`` says the episode
ended with that step (``terminated_t``: in a terminal state). With next-step autoreset the following step
``t + 1`` of that env is a reset step: its observation ``obs_{t+1}`` is the *final* observation of the
ended episode, and the action taken on it is ignored (``valid_{t+1}`` is False). So:

- a truncated episode bootstraps from ``V(obs_{t+1})``, the value of its final observation; a terminated
  one from 0;
- the advantage recursion stops at an episode end;
- reset steps get advantage 0 (the trainer also leaves them out of the loss).
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,  # (T, N, S)
    values: torch.Tensor,  # (T, N, S) V(obs_t)
    next_value: torch.Tensor,  # (N, S) V(obs_T)
    terminated: torch.Tensor,  # (T, N) bool
    ended: torch.Tensor,  # (T, N) bool
    valid: torch.Tensor,  # (T, N) bool
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``(T, N, S)`` (returns = advantages + values)."""
    steps = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    not_term = (~terminated).to(rewards.dtype).unsqueeze(-1)
    carry = (~ended).to(rewards.dtype).unsqueeze(-1)
    keep = valid.to(rewards.dtype).unsqueeze(-1)
    for t in reversed(range(steps)):
        nxt = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * nxt * not_term[t] - values[t]
        last = (delta + gamma * lam * carry[t] * last) * keep[t]
        adv[t] = last
    return adv, adv + values
