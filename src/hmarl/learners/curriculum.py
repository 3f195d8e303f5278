"""Staged symbol onboarding: start with the first symbols of the universe, grow to all of them.

The store lists symbols in the universe's order (dollar-volume ranking), so early stages train the most
liquid names. An inactive symbol's agent is forced to HOLD (it stays flat) and its steps weigh 0 in the loss.
"""

from __future__ import annotations

import math

import torch

from hmarl.learners.params import CurriculumConfig


def active_count(step: int, cfg: CurriculumConfig, num_symbols: int) -> int:
    if not cfg.enabled:
        return num_symbols
    fraction = next(f for s, f in reversed(cfg.stages) if step >= s)
    return max(1, min(num_symbols, math.ceil(fraction * num_symbols)))


def active_symbols(step: int, cfg: CurriculumConfig, num_symbols: int, device: torch.device) -> torch.Tensor:
    """``(S,)`` bool: symbols whose agents act and learn at env step ``step``."""
    return torch.arange(num_symbols, device=device) < active_count(step, cfg, num_symbols)
