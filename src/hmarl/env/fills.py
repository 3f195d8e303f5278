"""Order execution at the next bar's open: sells first, then buys, with costs and deterministic limits.

An order decided at bar ``t`` (after its close) fills at ``open[t + 1]``:

1. Orders in symbols not tradable at ``t + 1`` are cancelled.
2. Sells: SELL_PARTIAL sells ``sell_partial_fraction`` of the shares (all of them when the remainder,
   valued at ``close[t]``, would be below ``min_order_fraction`` of the allocation), SELL_ALL all.
   Fill price ``open x (1 - slippage)``, commission ``fee x fill notional``.
3. Buys are dollar orders fixed at the decision: BUY_k buys ``buy_fractions[k] x allocation``,
   ADD_TO_WINNER ``min(add_fraction x allocation, allocation - position value at close[t])``.
   New positions beyond the open-position limit are dropped in symbol order (lowest index first).
   When the buying power (cash, plus leverage room if allowed, plus this bar's sale proceeds) cannot pay
   for all buys with their costs, every buy of that account is scaled by the same factor (pro rata).
   Shares bought = notional / open; fill price ``open x (1 + slippage)``; commission on the fill notional.
4. Slippage fraction = ``slippage_bps`` + ``vol_coef x sigma[t]`` + ``impact_coef x order notional /
   adv[t]`` (capped), all known at the decision; the notional of a buy is its requested size.

An order that fills nothing (cancelled, limit, no cash) is executed as HOLD.

Optional master overrides (env/rebalance.py), on symbols whose executed action is HOLD: ``extra_sell`` a
fraction of the shares sold like SELL_PARTIAL (no dust rule), ``extra_buy`` a notional bought like any buy
(pro rata with the agents' buys, outside the open-position limit: the position is already open). The
executed action stays HOLD; costs and shares count as any fill's.

Implementation note: conditions are kept as float 0/1 (``sign`` of a non-negative quantity) rather than
bool tensors: on CPU, at 64 x 143, every bool-to-float conversion or ``where`` costs more than the
arithmetic it replaces.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hmarl.env.actions import BUY_FRAC, IS_ADD, SELL_FRAC


class Fills(NamedTuple):
    executed: torch.Tensor  # (N, S) int64 action actually executed
    q_buy: torch.Tensor  # (N, S) shares bought
    q_sell: torch.Tensor  # (N, S) shares sold
    px_buy: torch.Tensor  # (N, S) buy fill price (open x (1 + slippage))
    cost: torch.Tensor  # (N, S) commission + slippage paid, in currency
    cash_delta: torch.Tensor  # (N,) proceeds - payments
    buy_scale: torch.Tensor  # (N,) pro-rata factor applied to buys (1 when cash sufficed)


class FillParams(NamedTuple):
    fee: float
    slip_base: float
    slip_vol: float
    slip_impact: float
    slip_max: float
    add_fraction: float
    min_order_fraction: float


def positive(x: torch.Tensor) -> torch.Tensor:
    """Float 1.0 where ``x > 0``, else 0.0."""
    return x.clamp_min(0.0).sign_()


def execute(
    action: torch.Tensor,  # (N, S) int64, already masked and repetition-limited
    table: torch.Tensor,  # (3, 7) order table
    *,
    shares: torch.Tensor,  # (N, S)
    close0: torch.Tensor,  # (N, S) close at the decision bar t
    sigma0: torch.Tensor,  # (N, S)
    adv0: torch.Tensor,  # (N, S)
    open1: torch.Tensor,  # (N, S) open at the fill bar t + 1
    tradable1: torch.Tensor,  # (N, S) int64 0/1 at t + 1
    alloc: torch.Tensor,  # (N, 1)
    buying_power: torch.Tensor,  # (N,)
    new_slots: torch.Tensor,  # (N, 1) positions that may still be opened
    p: FillParams,
    extra_sell: torch.Tensor | None = None,  # (N, S) fraction of the shares, where the action is HOLD
    extra_buy: torch.Tensor | None = None,  # (N, S) notional, where the action is HOLD
) -> Fills:
    action = action * tradable1
    order = table.index_select(1, action.view(-1)).view(-1, *action.shape)  # (3, N, S)
    buy_frac, sell_frac, is_add = order[BUY_FRAC], order[SELL_FRAC], order[IS_ADD]

    # a sale that would leave less than min_order_fraction of the allocation sells everything
    value0 = shares * close0
    kept_value = value0 * (1.0 - sell_frac)
    dust = positive(alloc * p.min_order_fraction - kept_value).mul_(sell_frac.sign())
    sold = torch.maximum(sell_frac, dust)
    q_sell = shares * (sold if extra_sell is None else sold + extra_sell)  # exactly all shares when dust

    add = torch.minimum(alloc * p.add_fraction, (alloc - value0).clamp_min_(0.0))
    rank = buy_frac.sign().cumsum_(1)  # new positions, in symbol order
    within_limit = positive(new_slots + 0.5 - rank)
    want = (buy_frac * alloc).mul_(within_limit).addcmul_(is_add, add)
    if extra_buy is not None:
        want.add_(extra_buy)

    impact = (want + q_sell * close0).div_(adv0)
    slip = (sigma0 * p.slip_vol).add_(impact, alpha=p.slip_impact).add_(p.slip_base).clamp_max_(p.slip_max)
    proceeds = q_sell * open1 * (1.0 - slip) * (1.0 - p.fee)
    buy_unit = (slip + 1.0).mul_(1.0 + p.fee)  # cash paid per unit of requested notional
    need = (want * buy_unit).sum(1)
    proceeds_total = proceeds.sum(1)
    scale = ((buying_power + proceeds_total) / need.clamp_min(1e-12)).clamp_(0.0, 1.0)
    notional = want * scale.unsqueeze(1)
    q_buy = notional / open1
    px_buy = open1 * (1.0 + slip)

    paid = notional * buy_unit
    cost = (q_sell * open1 - proceeds).add_(paid).sub_(notional)
    cash_delta = proceeds_total - paid.sum(1)
    executed = action * (notional + q_sell).sign_().long()
    return Fills(executed, q_buy, q_sell, px_buy, cost, cash_delta, scale)
