"""Strict action masks, computed from the state at bar ``t``'s close for the decision at ``t``.

- HOLD is always allowed.
- BUY_*: the symbol is flat and tradable at ``t``, the open-position limit is not reached, and the
  buying power covers that order's notional plus commission.
- SELL_PARTIAL / SELL_ALL: a position is held and the symbol is tradable at ``t``.
- ADD_TO_WINNER: a winning position (close > entry x (1 + winner_threshold)) below its allocation by
  more than ``min_order_fraction`` of it, and buying power for the add.

A mask cannot see bar ``t + 1``: an order whose symbol turns out untradable at the fill, or that the
open-position limit or the shared cash cuts back, is resolved at the fill (see fills.py).

Implementation: each agent's situation is summarized in a 5-bit code (can open, can sell, can add, and
the account's cash level = how many BUY sizes its buying power covers); one table lookup turns the
codes into the ``(N, S, 7)`` bool masks. The conditions are float 0/1 arithmetic (cheaper than bool
tensors on CPU at these sizes).
"""

from __future__ import annotations

import torch

from hmarl.env.actions import Action
from hmarl.env.fills import positive


def mask_table(device: torch.device) -> torch.Tensor:
    """``(32, 7)`` bool: row ``can_open + 2 can_sell + 4 can_add + 8 cash_level`` -> allowed actions."""
    rows = []
    for code in range(32):
        can_open, can_sell, can_add, level = code & 1, (code >> 1) & 1, (code >> 2) & 1, code >> 3
        row = [False] * len(Action)
        row[Action.HOLD] = True
        for k, buy in enumerate((Action.BUY_SMALL, Action.BUY_MEDIUM, Action.BUY_LARGE)):
            row[buy] = bool(can_open and level > k)
        row[Action.SELL_PARTIAL] = row[Action.SELL_ALL] = bool(can_sell)
        row[Action.ADD_TO_WINNER] = bool(can_add)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool, device=device)


def action_masks(
    *,
    table: torch.Tensor,  # mask_table()
    holding: torch.Tensor,  # (N, S) float 0/1
    tradable: torch.Tensor,  # (N, S) float 0/1, at bar t
    close: torch.Tensor,  # (N, S)
    entry: torch.Tensor,  # (N, S) average entry price (0 when flat)
    value: torch.Tensor,  # (N, S) position value at close t
    alloc: torch.Tensor,  # (N, 1) allowed allocation per symbol
    buying_power: torch.Tensor,  # (N, 1)
    room_for_new: torch.Tensor,  # (N, 1) float 0/1: open positions < limit
    buy_fracs: torch.Tensor,  # (3,)
    fee: float,
    add_fraction: float,
    min_order_fraction: float,
    winner_threshold: float,
) -> torch.Tensor:
    """``(N, S, 7)`` bool, action order as :class:`hmarl.env.actions.Action`."""
    can_sell = tradable * holding
    can_open = (tradable - can_sell).mul_(room_for_new)
    winner = positive(close - entry * (1.0 + winner_threshold))
    room = alloc - value
    room_ok = positive(room - alloc * min_order_fraction)
    add_cost = torch.minimum(room, alloc * add_fraction).mul_(1.0 + fee)
    cash_ok = 1.0 - positive(add_cost - buying_power)
    can_add = can_sell * winner * room_ok * cash_ok
    level = (buying_power >= alloc * buy_fracs * (1.0 + fee)).sum(1, keepdim=True)  # (N, 1)
    code = torch.add(can_open, can_sell, alpha=2.0).add_(can_add, alpha=4.0).add_(level, alpha=8.0).long()
    return table.index_select(0, code.view(-1)).view(*code.shape, table.shape[1])
