"""MAPPO for the master agent: the clipped PPO objective over the directive grid with a centralized critic.

The master decides every ``interval`` env steps but its critic is trained on every env step: the rollout is
stored per env step, GAE (gae.py) runs over steps with the per-step master reward, and the policy term
counts only the steps where the master decided (``due``). Between decisions the directive persists, so
the advantage of a decision is the discounted sum of the TD errors until the next one (a semi-MDP option
with a per-step critic). With ``master.critic: centralized`` the value function sees the joint portfolio
state (MAPPO); with ``independent`` only the master's own observation (IPPO).
"""

from __future__ import annotations

import torch

from hmarl.agents import distributions as dist
from hmarl.learners.ppo import LossCoefs, clipped_objective
from hmarl.learners.rollout import StepBuffer


class MasterBuffer(StepBuffer):
    """One rollout of ``num_steps`` env steps x ``num_envs``, float32 (small: one row per env step): the
    master's observation, the joint state its centralized critic reads, and where it decided (``due``)."""

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, joint_dim: int, device: torch.device):
        super().__init__(num_steps, num_envs, (), torch.int64, device)
        self.obs = torch.zeros(num_steps, num_envs, obs_dim, device=device)
        self.joint = torch.zeros(num_steps, num_envs, joint_dim, device=device)
        self.due = torch.zeros(num_steps, num_envs, dtype=torch.bool, device=device)


def mappo_loss(
    *,
    logits: torch.Tensor,  # (B, G)
    actions: torch.Tensor,  # (B,)
    new_value: torch.Tensor,  # (B,)
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    policy_weight: torch.Tensor,  # (B,) 1 where the master decided
    value_weight: torch.Tensor,  # (B,) 1 on every valid step
    coefs: LossCoefs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The master's loss: :func:`clipped_objective` with the policy terms where it decided and the value
    term on every valid step. Total loss and its named terms (detached): policy, value, entropy, total,
    approx_kl, clipfrac."""
    t = clipped_objective(
        dist.Categorical(logits),
        actions,
        new_value,
        old_logprob,
        old_value,
        advantages,
        returns,
        policy_weight,
        value_weight,
        coefs,
    )
    total = t["policy_loss"] + coefs.vf * t["value_loss"] - coefs.ent * t["entropy"]
    terms = {
        "policy_loss": t["policy_loss"].detach(),
        "value_loss": t["value_loss"].detach(),
        "entropy": t["entropy"].detach(),
        "total": total.detach(),
        "approx_kl": t["approx_kl"],
        "clipfrac": t["clipfrac"],
    }
    return total, terms
