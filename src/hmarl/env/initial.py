"""Episodes that start invested (``env.initial_position: allocation``): holding is the neutral state.

At a reset, each account buys every symbol tradable at its start bar for ``env.initial_fraction`` of the
symbol's allowed allocation under the directive in force (``equity x cap x risk``, as observe.py computes
it), the way any buy fills (env/fills.py ``execute``, same slippage and commission) except that decision
and fill are the start bar's close (the episode's first observation is after that close, so no bar is
seen before it trades):

- fill price ``close x (1 + slippage)``, slippage from ``sigma`` and ``adv`` of the start bar, commission
  on the fill notional;
- the open-position limit of the directive's mode applies as for any new position (symbols beyond it, in
  symbol order, stay in cash);
- the buys never spend more than the cash (no leverage at the start): when notional + costs exceed it,
  every buy is scaled by one factor (pro rata).

The account then holds the shares at entry price = fill price (peak = the higher of entry and close),
holding time 1 bar (like a position opened by the last fill), its cash less what was paid, equity marked
at the start bar's close (the episode's equity peak: its entry costs are not a drawdown). Agents' action
history stays empty: the purchase is not an action of theirs. ``env.entry_cost`` keeps each account's
cost (N, S) of its latest initial purchase, for backtests that account for it.

``reset`` runs this torch code on either backend; the fused C step buys the same way at an autoreset
(native_step.c ``buy_initial``; tests/test_env_neutral_hold.py checks the two agree).
"""

from __future__ import annotations

import torch

from hmarl.env.actions import BUY_FRAC, Action
from hmarl.env.fills import execute
from hmarl.env.market import ADV, CLOSE, SIGMA, TRADABLE
from hmarl.env.vol_prior import allocation


def initial_order_table(table: torch.Tensor, fraction: float) -> torch.Tensor:
    """The order table with BUY_LARGE buying ``fraction`` of the allocation (the initial purchase's order)."""
    out = table.clone()
    out[BUY_FRAC, Action.BUY_LARGE] = fraction
    return out


def buy_initial_positions(env, r: torch.Tensor) -> None:
    """Open the initial positions of the envs where ``r`` (N,) bool, just reset to their start bar (flat,
    equity = cash). Computed for every env without a data-dependent branch; only ``r`` rows change."""
    row = env.market.table.index_select(1, env.t)  # (5, N, S) the start bar
    close = row[CLOSE]
    d = env.directives.index_select(0, env.directive)  # (N, 3) risk, cap, limit
    cap, alloc = allocation(env, d)  # d[:, 1] scaled per bar under cap_unit: vol_target
    action = r.long().unsqueeze(1).mul(int(Action.BUY_LARGE)).expand_as(close)
    fills = execute(
        action,
        env.initial_table,
        shares=torch.zeros_like(close),
        close0=close,
        sigma0=row[SIGMA],
        adv0=row[ADV],
        open1=close,
        tradable1=row[TRADABLE].long(),
        alloc=alloc,
        buying_power=env.cash * r,
        new_slots=d[:, 2:3],
        p=env.fill_params,
    )
    bought = fills.q_buy.sign()  # float 0/1; 0 on every row that was not reset
    env.shares.add_(fills.q_buy)
    env.entry.addcmul_(fills.px_buy, bought)
    env.peak_px.addcmul_(torch.maximum(fills.px_buy, close), bought)
    env.hold.add_(bought)
    env.cash.add_(fills.cash_delta)
    env.cash.copy_(torch.where(r, env.cash.clamp_min(0.0), env.cash))  # pro rata may undershoot by rounding
    marked = env.cash + (env.shares * close).sum(1)
    env.equity.copy_(torch.where(r, marked, env.equity))
    env.peak_eq.copy_(torch.where(r, marked, env.peak_eq))
    env.entry_cost.copy_(torch.where(r.unsqueeze(1), fills.cost, env.entry_cost))
