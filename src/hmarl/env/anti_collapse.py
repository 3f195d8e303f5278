"""Anti-collapse mechanics of the seed, as vectorized environment rules.

- Repetition limit: an agent whose last ``max_consecutive`` executed actions were all ``a`` (a != HOLD)
  and who picks ``a`` again gets HOLD instead (a "consecutive-action violation", penalized by the
  ``action_repeat_penalty`` reward component).
- Diversity window: the executed actions of the last ``window`` steps of the episode sit in a ring
  buffer, with running per-action counts: one increment for the action entering the window, one
  decrement for the action leaving it; nothing is recounted. The counts are packed one byte per action
  into an int64 per agent, so an update is two table lookups and an add, and "how many actions have a
  non-zero count" is a few integer ops (SWAR byte tests). The number of distinct actions in the window
  picks the diversity bonus tier.

The ring slot is global (``step % window``), the same for all envs; a slot written before the env's
current episode began (episode step < window) holds a previous episode's action and is not decremented.
"""

from __future__ import annotations

import torch

from hmarl.env.actions import NUM_ACTIONS

_LOW7 = 0x7F7F7F7F7F7F7F7F
_HIGH = -0x7F7F7F7F7F7F7F80  # 0x8080808080808080 as a signed int64
_ONES = 0x0101010101010101


def repetition_violations(
    action: torch.Tensor, last: torch.Tensor, run: torch.Tensor, max_consecutive: int
) -> torch.Tensor:
    """Bool ``(N, S)``: ``action`` would be the (max_consecutive + 1)-th identical non-HOLD action in a row."""
    return (action == last) & (run >= max_consecutive) & (action != 0)


def tier_table(tiers: list[tuple[int, float]], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(8,)`` bonus by number of unique actions 0..7: the first tier whose minimum is met wins."""
    table = torch.zeros(NUM_ACTIONS + 1, dtype=torch.float64)
    for unique in range(NUM_ACTIONS + 1):
        for need, bonus in tiers:
            if unique >= need:
                table[unique] = bonus
                break
    return table.to(device=device, dtype=dtype)


def action_bytes(device: torch.device) -> torch.Tensor:
    """``(7,)`` int64: action ``a`` -> ``1 << (8 a)``, its unit in a packed count word."""
    return torch.tensor([1 << (8 * a) for a in range(NUM_ACTIONS)], dtype=torch.int64, device=device)


def nonzero_bytes(packed: torch.Tensor) -> torch.Tensor:
    """Number of non-zero bytes of each int64 whose bytes are all < 128."""
    high = (packed + _LOW7) & _HIGH  # a byte's top bit is set iff the byte was non-zero
    return (((high >> 7) * _ONES) >> 56) & 0xFF


def unpack_counts(packed: torch.Tensor) -> torch.Tensor:
    """``(..., 7)`` uint8 per-action counts of packed words (little-endian byte order)."""
    return packed.contiguous().view(torch.uint8).view(*packed.shape, 8)[..., :NUM_ACTIONS]


class ActionWindow:
    """Executed actions of the last ``window`` steps per (env, symbol), with running counts."""

    def __init__(self, num_envs: int, num_symbols: int, window: int, device: torch.device):
        if window > 127:
            raise ValueError("diversity_window must be <= 127 (counts are packed one byte per action)")
        self.window = window
        self.ring = torch.zeros(window, num_envs, num_symbols, dtype=torch.int64, device=device)
        self.packed = torch.zeros(num_envs, num_symbols, dtype=torch.int64, device=device)
        self.unit = action_bytes(device)
        self.step_count = 0  # host-side counter: picks the ring slot, never synced

    def push(self, action: torch.Tensor, step_in_episode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record ``action`` (N, S) int64 of every env; returns the number of unique actions in the window
        (N, S) and the action's unit word (``1 << 8 a``)."""
        slot = self.ring[self.step_count % self.window]
        self.step_count += 1
        leaving = slot * (step_in_episode >= self.window).unsqueeze(1)
        entering = self.unit.index_select(0, action.view(-1)).view_as(action)
        self.packed += entering
        self.packed -= leaving
        slot.copy_(entering)
        return nonzero_bytes(self.packed), entering

    def reset_where(self, keep: torch.Tensor) -> None:
        """Empty the window of envs where ``keep`` (N,) int64 is 0."""
        self.packed.mul_(keep.unsqueeze(1))

    def recent_counts(self) -> torch.Tensor:
        """``(N, S, 7)`` uint8 executed-action counts in the window (a copy)."""
        return unpack_counts(self.packed).clone()
