"""The master's directive sets the exposure of what is held (``env.master.rebalance``, opt-in).

Without it (``none``) the directive (allocation = equity x cap x risk) only sizes new orders: a master that
cuts risk cannot reach the positions already held. With it, at a bar where the master was due (the
observation the actions were decided on had ``master_due``: ``k % interval == 0``, the directive set by
``set_directive`` in force), each symbol that is held, whose decided (masked, repetition-limited) action is
HOLD and that is tradable at t+1 has the target value ``alloc x env.initial_fraction``. With
``value0 = shares x close[t]`` and ``band = rebalance_band``:

- ``trim`` and ``target``: above ``target x (1 + band)`` the account sells ``shares x (1 - target / value0)``
  at open t+1 (a sale like SELL_PARTIAL: same slippage and commission);
- ``target`` only: below ``target x (1 - band)`` it buys the notional ``target - value0`` at open t+1 like
  any buy (slippage, commission, pro rata with the agents' buys; not counted against the open limit).

An agent's own order on the symbol takes precedence. The executed action stays HOLD (the trade is the
master's: the anti-collapse windows and action telemetry do not see it), while its costs and traded shares
count in the symbol's reward components and the step's info like any fill (``info["rebalanced"]``: the
signed notional traded at the fill). native_step.c computes the same in its first pass.
"""

from __future__ import annotations

import torch

from hmarl.env.fills import positive
from hmarl.env.rewards import TINY

MODES = ("none", "trim", "target")


def rebalance_orders(
    env, decided: torch.Tensor, ctx: dict, tradable1: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(extra_sell, extra_buy)`` overrides of :func:`hmarl.env.fills.execute` for this step (both None
    under ``rebalance: none``; ``extra_buy`` None under ``trim``)."""
    m = env.cfg.master
    if m.rebalance == "none":
        return None, None
    value0, alloc = ctx["value"], ctx["alloc"]  # the decision bar's, as observed
    due = ctx["master_due"].to(env.dtype).unsqueeze(1)
    eligible = torch.sign(env.shares).mul_(tradable1).mul_(due).mul_(decided == 0)
    target = alloc * env.cfg.initial_fraction
    over = positive(value0 - target * (1.0 + m.rebalance_band)).mul_(eligible)
    extra_sell = (1.0 - target / value0.clamp_min(TINY)).mul_(over)
    if m.rebalance == "trim":
        return extra_sell, None
    under = positive(target * (1.0 - m.rebalance_band) - value0).mul_(eligible)
    return extra_sell, (target - value0).mul_(under)


def rebalanced_notional(fills, open1: torch.Tensor, extra_sell, extra_buy) -> torch.Tensor:
    """(N, S) signed notional the master's rebalance traded at the fill (+ bought, - sold; 0 elsewhere)."""
    if extra_sell is None:
        return torch.zeros_like(open1)
    traded = (fills.q_buy - fills.q_sell) * open1
    flag = extra_sell if extra_buy is None else extra_sell + extra_buy
    return traded.mul_(flag.sign())
