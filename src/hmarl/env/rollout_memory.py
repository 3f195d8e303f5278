"""Rollout storage for the simulator: what one step of one (env, symbol) costs in memory.

A buffer built on this env stores indices and small state, never market windows (the policy gathers
those again by ``bar`` at update time). The layout below is what a PPO rollout needs per step; its
dtypes are chosen for size: uint8 action ids, a bit-packed 7-action mask (one byte), float16 per-agent
state, float32 for what enters the loss (log-probs, values, rewards, advantages, returns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hmarl.env.spec import AGENT_FEATURES, DIRECTIVE_FEATURES, PORTFOLIO_FEATURES


@dataclass(frozen=True)
class Field:
    per: str  # "agent": one per (env, symbol); "env": one per env
    shape: tuple[int, ...]
    dtype: torch.dtype


def rollout_layout(num_regime: int = 8) -> dict[str, Field]:
    return {
        "bar": Field("env", (), torch.int32),
        "directive": Field("env", (), torch.uint8),
        "portfolio": Field("env", (len(PORTFOLIO_FEATURES),), torch.float16),
        "regime": Field("env", (num_regime,), torch.float16),
        "directive_features": Field("env", (len(DIRECTIVE_FEATURES),), torch.float16),
        "done": Field("env", (), torch.bool),
        "master_reward": Field("env", (), torch.float32),
        "agent": Field("agent", (len(AGENT_FEATURES),), torch.float16),
        "action_counts": Field("agent", (7,), torch.uint8),
        "mask_bits": Field("agent", (), torch.uint8),
        "action": Field("agent", (), torch.uint8),
        "executed": Field("agent", (), torch.uint8),
        "logprob": Field("agent", (), torch.float32),
        "value": Field("agent", (), torch.float32),
        "reward": Field("agent", (), torch.float32),
        "advantage": Field("agent", (), torch.float32),
        "return": Field("agent", (), torch.float32),
    }


def _field_bytes(field: Field, num_envs: int, num_symbols: int) -> int:
    count = num_envs * (num_symbols if field.per == "agent" else 1)
    for d in field.shape:
        count *= d
    return count * torch.empty((), dtype=field.dtype).element_size()


def rollout_bytes(num_envs: int, num_steps: int, num_symbols: int, num_regime: int = 8) -> int:
    """Bytes of a rollout buffer of ``num_steps`` x ``num_envs`` x ``num_symbols``."""
    per_step = sum(_field_bytes(f, num_envs, num_symbols) for f in rollout_layout(num_regime).values())
    return per_step * num_steps


def allocate_rollout(
    num_envs: int, num_steps: int, num_symbols: int, num_regime: int = 8, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Zeroed tensors of :func:`rollout_layout`, shaped ``(steps, envs[, symbols], *shape)``."""
    out = {}
    for name, f in rollout_layout(num_regime).items():
        lead = (num_steps, num_envs) + ((num_symbols,) if f.per == "agent" else ())
        out[name] = torch.zeros(*lead, *f.shape, dtype=f.dtype, device=device)
    return out


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(..., 7)`` bool -> ``(...)`` uint8 bit field (bit a = action a allowed)."""
    weights = (2 ** torch.arange(mask.shape[-1], device=mask.device)).to(torch.uint8)
    return (mask.to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(bits: torch.Tensor, num_actions: int = 7) -> torch.Tensor:
    shifts = torch.arange(num_actions, device=bits.device, dtype=torch.uint8)
    return ((bits.unsqueeze(-1) >> shifts) & 1).bool()
