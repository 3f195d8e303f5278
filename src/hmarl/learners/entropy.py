"""The Stage 5 exploration stack: entropy schedule, adaptive entropy bonus and action-entropy guard.

- :func:`hold_then_linear`: the coefficient holds at ``start`` for ``hold_steps``, then falls linearly to
  ``end`` over ``decay_steps``, never below ``min_coef`` (seed defaults 0.08 -> 0.03, hold 10k, decay 40k).
- Adaptive bonus: after ``warmup_steps`` the coefficient is multiplied by
  ``1 + scale x max(0, target - H) / target`` where ``H`` is the measured policy action entropy (nats)
  of the last rollout (seed defaults target 0.55, scale 0.35, warmup 4k).
- Guard: after ``warmup_steps``, every symbol whose policy action entropy over the last rollout is below
  ``threshold`` (seed default 0.22) is an intervention: its actor output layer is shrunk toward uniform
  logits. Interventions are counted (per update and in total) and logged.

:class:`EntropyController` holds the state (the last measured entropy, the intervention count) so a
checkpoint restores it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmarl.learners.params import AdaptiveEntropyConfig, EntropyGuardConfig, EntropyScheduleConfig


def hold_then_linear(step: int, start: float, end: float, hold: int, decay: int, minimum: float) -> float:
    if step <= hold:
        value = start
    elif decay <= 0 or step >= hold + decay:
        value = end
    else:
        value = start + (end - start) * (step - hold) / decay
    return max(value, minimum)


def scheduled_coef(step: int, cfg: EntropyScheduleConfig) -> float:
    if cfg.schedule == "constant":
        return max(cfg.start, cfg.min_coef)
    return hold_then_linear(step, cfg.start, cfg.end, cfg.hold_steps, cfg.decay_steps, cfg.min_coef)


def adaptive_multiplier(step: int, entropy: float | None, cfg: AdaptiveEntropyConfig) -> float:
    if not cfg.enabled or entropy is None or step < cfg.warmup_steps:
        return 1.0
    return 1.0 + cfg.scale * max(0.0, cfg.target - entropy) / cfg.target


def guard_mask(step: int, per_symbol_entropy: torch.Tensor, cfg: EntropyGuardConfig) -> torch.Tensor:
    """``(S,)`` bool: symbols the guard intervenes on at this step."""
    if not cfg.enabled or step < cfg.warmup_steps:
        return torch.zeros_like(per_symbol_entropy, dtype=torch.bool)
    return per_symbol_entropy < cfg.threshold


@dataclass
class EntropyController:
    schedule: EntropyScheduleConfig
    adaptive: AdaptiveEntropyConfig
    guard: EntropyGuardConfig
    measured: float | None = None  # policy action entropy of the last rollout (nats)
    interventions: int = 0  # guard interventions so far

    def coef(self, step: int) -> float:
        """The entropy coefficient for the update at ``step``."""
        return scheduled_coef(step, self.schedule) * adaptive_multiplier(step, self.measured, self.adaptive)

    def observe(self, step: int, entropy: float, per_symbol_entropy: torch.Tensor) -> torch.Tensor:
        """Record the rollout's entropy; returns the guard's ``(S,)`` intervention mask (and counts it)."""
        self.measured = float(entropy)
        hit = guard_mask(step, per_symbol_entropy, self.guard)
        self.interventions += int(hit.sum())
        return hit

    def state_dict(self) -> dict:
        return {"measured": self.measured, "interventions": self.interventions}

    def load_state_dict(self, state: dict) -> None:
        self.measured = state["measured"]
        self.interventions = int(state["interventions"])
