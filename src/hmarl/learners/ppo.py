"""The clipped PPO objective with value clipping, entropy bonus and the KL-to-SL-prior auxiliary term.

Every mean is weighted by ``weight`` (1 for an agent-step that counts: not an autoreset step, symbol active
in the curriculum; 0 otherwise). Losses come back as named terms so each one is logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmarl.agents import distributions as dist
from hmarl.learners.sl_prior import prior_kl


@dataclass(frozen=True)
class LossCoefs:
    clip: float
    clip_vloss: bool
    vf: float
    ent: float
    sl_kl: float
    norm_adv: bool


def weighted_mean(x: torch.Tensor, weight: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return (x * weight).sum() / total


def normalize_advantages(adv: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    total = weight.sum().clamp_min(1.0)
    mean = (adv * weight).sum() / total
    var = (((adv - mean) ** 2) * weight).sum() / (total - 1.0).clamp_min(1.0)
    return (adv - mean) / (var.sqrt() + 1e-8)


def value_errors(
    new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, clip: float, clip_vloss: bool
) -> torch.Tensor:
    """Squared value errors, with PPO's value clipping (the larger of the clipped and unclipped error)."""
    if not clip_vloss:
        return (new_value - returns) ** 2
    clipped = old_value + (new_value - old_value).clamp(-clip, clip)
    return torch.maximum((new_value - returns) ** 2, (clipped - returns) ** 2)


def ppo_loss(
    *,
    logits: torch.Tensor,  # (B, S, 7) raw actor logits
    mask: torch.Tensor,  # (B, S, 7) bool
    actions: torch.Tensor,  # (B, S)
    new_value: torch.Tensor,  # (B, S)
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    weight: torch.Tensor,  # (B, S) float
    log_prior: torch.Tensor | None,  # (B, S, 7) SL prior, None: no KL term
    coefs: LossCoefs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its named terms (detached): policy, value, entropy, sl_kl, approx_kl, clipfrac."""
    logp_all = dist.masked_logits(logits.float(), mask)
    new_logprob = dist.log_prob(logp_all, actions)
    entropy = dist.entropy(logp_all, mask)
    new_value = new_value.float()
    total_w = weight.sum().clamp_min(1.0)

    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    adv = normalize_advantages(advantages, weight) if coefs.norm_adv else advantages
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - coefs.clip, 1.0 + coefs.clip)
    policy = weighted_mean(torch.maximum(pg1, pg2), weight, total_w)

    v_err = value_errors(new_value, old_value, returns, coefs.clip, coefs.clip_vloss)
    value = 0.5 * weighted_mean(v_err, weight, total_w)
    ent = weighted_mean(entropy, weight, total_w)
    sl_kl = (
        weighted_mean(prior_kl(logp_all, log_prior, mask), weight, total_w)
        if log_prior is not None
        else torch.zeros((), device=logits.device)
    )
    total = policy + coefs.vf * value - coefs.ent * ent + coefs.sl_kl * sl_kl

    with torch.no_grad():
        approx_kl = weighted_mean((ratio - 1.0) - log_ratio, weight, total_w)  # k3 estimator
        clipfrac = weighted_mean(((ratio - 1.0).abs() > coefs.clip).float(), weight, total_w)
    terms = {
        "policy_loss": policy.detach(),
        "value_loss": value.detach(),
        "entropy": ent.detach(),
        "sl_kl": sl_kl.detach(),
        "total": total.detach(),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }
    return total, terms
