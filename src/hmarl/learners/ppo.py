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


def clipped_objective(
    pi: dist.Categorical,
    actions: torch.Tensor,
    new_value: torch.Tensor,
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    policy_weight: torch.Tensor,
    value_weight: torch.Tensor,
    coefs: LossCoefs,
) -> dict[str, torch.Tensor]:
    """The terms every PPO loss here shares: the clipped policy loss (advantages normalized over the policy
    weight when ``norm_adv``), the (clipped) value loss over the value weight, the entropy, and the k3
    approximate KL and clip fraction (no gradient). ``policy_loss``, ``value_loss``, ``entropy`` carry it."""
    pw = policy_weight.sum().clamp_min(1.0)
    vw = value_weight.sum().clamp_min(1.0)
    log_ratio = pi.log_prob(actions) - old_logprob
    ratio = log_ratio.exp()
    adv = normalize_advantages(advantages, policy_weight) if coefs.norm_adv else advantages
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - coefs.clip, 1.0 + coefs.clip))
    v_err = value_errors(new_value.float(), old_value, returns, coefs.clip, coefs.clip_vloss)
    with torch.no_grad():
        approx_kl = weighted_mean((ratio - 1.0) - log_ratio, policy_weight, pw)  # k3 estimator
        clipfrac = weighted_mean(((ratio - 1.0).abs() > coefs.clip).float(), policy_weight, pw)
    return {
        "policy_loss": weighted_mean(pg, policy_weight, pw),
        "value_loss": 0.5 * weighted_mean(v_err, value_weight, vw),
        "entropy": weighted_mean(pi.entropy(), policy_weight, pw),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }


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
    """The symbol agents' loss: :func:`clipped_objective` plus ``sl_kl`` x KL(policy || SL prior). Total loss
    and its named terms (detached): policy, value, entropy, sl_kl, total, approx_kl, clipfrac."""
    pi = dist.Categorical(logits, mask)
    t = clipped_objective(
        pi, actions, new_value, old_logprob, old_value, advantages, returns, weight, weight, coefs
    )
    total_w = weight.sum().clamp_min(1.0)
    sl_kl = (
        weighted_mean(prior_kl(pi.logp, log_prior, mask), weight, total_w)
        if log_prior is not None
        else torch.zeros((), device=logits.device)
    )
    total = t["policy_loss"] + coefs.vf * t["value_loss"] - coefs.ent * t["entropy"] + coefs.sl_kl * sl_kl
    terms = {
        "policy_loss": t["policy_loss"].detach(),
        "value_loss": t["value_loss"].detach(),
        "entropy": t["entropy"].detach(),
        "sl_kl": sl_kl.detach(),
        "total": total.detach(),
        "approx_kl": t["approx_kl"],
        "clipfrac": t["clipfrac"],
    }
    return total, terms
