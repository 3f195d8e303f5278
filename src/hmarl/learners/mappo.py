"""MAPPO for the master agent: the clipped PPO objective over the directive grid with a centralized critic.

The master decides every ``interval`` env steps but its critic is trained on every env step: the rollout is
stored per env step, GAE (gae.py) runs over steps with the per-step master reward, and the policy term
counts only the steps where the master decided (``due``). Between decisions the directive persists, so
the advantage of a decision is the discounted sum of the TD errors until the next one (a semi-MDP option
with a per-step critic). With ``master.critic: centralized`` the value function sees the joint portfolio
state (MAPPO); with ``independent`` only the master's own observation (IPPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmarl.learners.ppo import normalize_advantages, value_errors, weighted_mean


@dataclass(frozen=True)
class MasterCoefs:
    clip: float
    clip_vloss: bool
    vf: float
    ent: float
    norm_adv: bool


class MasterBuffer:
    """One rollout of ``num_steps`` env steps x ``num_envs``, float32 (small: one row per env step)."""

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, joint_dim: int, device: torch.device):
        t, n = num_steps, num_envs
        self.num_steps, self.num_envs = t, n
        self.obs = torch.zeros(t, n, obs_dim, device=device)
        self.joint = torch.zeros(t, n, joint_dim, device=device)
        self.action = torch.zeros(t, n, dtype=torch.int64, device=device)
        self.logprob = torch.zeros(t, n, device=device)
        self.value = torch.zeros(t, n, device=device)
        self.reward = torch.zeros(t, n, device=device)
        self.due = torch.zeros(t, n, dtype=torch.bool, device=device)
        self.terminated = torch.zeros(t, n, dtype=torch.bool, device=device)
        self.ended = torch.zeros(t, n, dtype=torch.bool, device=device)
        self.valid = torch.zeros(t, n, dtype=torch.bool, device=device)


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
    coefs: MasterCoefs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its named terms (detached): policy, value, entropy, approx_kl, clipfrac."""
    logp_all = torch.log_softmax(logits.float(), -1)
    new_logprob = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pw = policy_weight.sum().clamp_min(1.0)
    vw = value_weight.sum().clamp_min(1.0)

    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    adv = normalize_advantages(advantages, policy_weight) if coefs.norm_adv else advantages
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - coefs.clip, 1.0 + coefs.clip))
    policy = weighted_mean(pg, policy_weight, pw)

    new_value = new_value.float()
    v_err = value_errors(new_value, old_value, returns, coefs.clip, coefs.clip_vloss)
    value = 0.5 * weighted_mean(v_err, value_weight, vw)
    ent = weighted_mean(entropy, policy_weight, pw)
    total = policy + coefs.vf * value - coefs.ent * ent
    with torch.no_grad():
        approx_kl = weighted_mean((ratio - 1.0) - log_ratio, policy_weight, pw)
        clipfrac = weighted_mean(((ratio - 1.0).abs() > coefs.clip).float(), policy_weight, pw)
    terms = {
        "policy_loss": policy.detach(),
        "value_loss": value.detach(),
        "entropy": ent.detach(),
        "total": total.detach(),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }
    return total, terms
