"""The SL prior over the 7 symbol actions and the annealed KL(policy || prior) auxiliary loss.

The SL cache gives each (bar, symbol) three direction distributions (down / flat / up of the MLP, LSTM and
GRU); their mean is read as an intent, spread over the action groups that carry it out:

- flat -> HOLD;  up -> BUY_SMALL / BUY_MEDIUM / BUY_LARGE / ADD_TO_WINNER;  down -> SELL_PARTIAL / SELL_ALL.

A group's mass is split evenly over its allowed actions; a group with none allowed (e.g. "down" while
flat) gives its mass to HOLD, the action that keeps the position as the intent wants. A share
``smoothing`` is spread uniformly over the allowed actions, so the prior never rules an allowed action out.
Its most likely *group* is the SL rule: buy on a predicted rise when flat, sell on a predicted fall when
held, hold otherwise (within a group the sizes share the mass evenly).
"""

from __future__ import annotations

import torch

from hmarl.agents.distributions import NEG, kl
from hmarl.env.actions import NUM_ACTIONS, Action
from hmarl.learners.params import SLPriorConfig

GROUPS = (
    (Action.HOLD,),  # flat
    (Action.BUY_SMALL, Action.BUY_MEDIUM, Action.BUY_LARGE, Action.ADD_TO_WINNER),  # up
    (Action.SELL_PARTIAL, Action.SELL_ALL),  # down
)
DOWN, FLAT, UP = 0, 1, 2  # class order of the SL cache (hmarl.sl.labels.CLASSES)


def _membership(device: torch.device) -> torch.Tensor:
    """``(3, 7)``: row flat / up / down, 1 where the action belongs to the group."""
    g = torch.zeros(3, NUM_ACTIONS, device=device)
    for row, actions in enumerate(GROUPS):
        g[row, list(actions)] = 1.0
    return g


def direction_probs(sl_probs: torch.Tensor) -> torch.Tensor:
    """``(..., 9)`` cache rows -> ``(..., 3)`` mean (flat, up, down) over the three models; NaN -> uniform."""
    p = torch.nan_to_num(sl_probs.float(), nan=1.0 / 3.0).unflatten(-1, (3, 3)).mean(-2)
    return torch.stack([p[..., FLAT], p[..., UP], p[..., DOWN]], -1)


def action_prior(sl_probs: torch.Tensor, mask: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Normalized log-probabilities ``(..., 7)`` of the SL prior; masked actions get ``NEG``."""
    intent = direction_probs(sl_probs)  # (..., 3) flat, up, down
    g = _membership(mask.device)
    allowed = mask.float()
    n = allowed @ g.T  # (..., 3) allowed actions per group
    per_action = (intent / n.clamp_min(1.0)) @ g * allowed
    orphan = (intent * (n == 0)).sum(-1)  # mass of groups with nothing allowed -> HOLD
    per_action[..., Action.HOLD] += orphan
    uniform = allowed / allowed.sum(-1, keepdim=True)
    prior = (1.0 - smoothing) * per_action + smoothing * uniform
    return torch.log(prior.clamp_min(1e-12)).masked_fill(~mask, NEG)


def decision_group(logp: torch.Tensor) -> torch.Tensor:
    """Index in ``GROUPS`` (hold / buy / sell) of the group holding the most probability mass."""
    return (logp.exp() @ _membership(logp.device).T).argmax(-1)


def prior_kl(logp: torch.Tensor, log_prior: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(policy || prior) per agent, over allowed actions."""
    return kl(logp, log_prior, mask)


def prior_coef(step: int, cfg: SLPriorConfig) -> float:
    """Linear anneal from ``coef`` at step 0 to ``final_coef`` at ``anneal_steps`` (0 when disabled)."""
    if not cfg.enabled:
        return 0.0
    frac = min(1.0, step / cfg.anneal_steps)
    return cfg.coef + frac * (cfg.final_coef - cfg.coef)
