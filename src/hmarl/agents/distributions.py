"""Masked categorical distribution over the 7 symbol actions.

Masked-out actions get probability exactly 0: they are never sampled, and log-probabilities and entropy
are computed over the allowed actions only (HOLD is always allowed, so no row is empty). Functions, not a
``torch.distributions`` object: the hot loop needs only these three numbers, without validation overhead.
"""

from __future__ import annotations

import torch

NEG = -1e9  # a masked logit: exp underflows to exactly 0 and, unlike -inf, keeps gradients finite


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalized log-probabilities ``(..., A)``; masked entries are ``NEG``-ish (probability 0)."""
    return torch.log_softmax(logits.masked_fill(~mask, NEG), dim=-1)


def sample(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-max draw from normalized log-probabilities ``(..., A)`` -> int64 ``(...)``."""
    u = torch.rand(logp.shape, generator=generator, device=logp.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))
    return (logp.float() + gumbel).argmax(-1)


def log_prob(logp: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def entropy(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the allowed actions (masked terms are exactly 0, not 0 x -inf)."""
    p = logp.exp()
    return -(p * logp).masked_fill(~mask, 0.0).sum(-1)


def kl(logp: torch.Tensor, logq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the allowed actions of two normalized masked log-probability tensors."""
    return (logp.exp() * (logp - logq)).masked_fill(~mask, 0.0).sum(-1)


def choose(logp: torch.Tensor, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The action of normalized log-probabilities: the most likely (``greedy``) or a sampled one."""
    return logp.argmax(-1) if greedy else sample(logp, generator)


class Categorical:
    """The action distribution of raw ``logits`` (float32), masked when ``mask`` is given: one object for
    acting (``sample`` / ``choose``) and for the loss (``log_prob``, ``entropy``, ``logp``)."""

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor | None = None):
        self.mask = mask
        self.logp = (
            masked_logits(logits.float(), mask) if mask is not None else torch.log_softmax(logits.float(), -1)
        )

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample(self.logp, generator)

    def choose(self, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        return choose(self.logp, greedy, generator)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return log_prob(self.logp, actions)

    def entropy(self) -> torch.Tensor:
        if self.mask is not None:
            return entropy(self.logp, self.mask)
        return -(self.logp.exp() * self.logp).sum(-1)
