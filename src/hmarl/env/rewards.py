"""Reward shaper: each component separately per (env, symbol) and step, then one weighted sum.

Units: the symbol agent's money amounts are divided by its allowed allocation at the decision
(``alloc = equity[t] x cap x risk``), so a component is a return on the capital the agent may use.
For a step from the decision at ``t`` to the mark at ``close[t + 1]``:

- ``pnl``: (position value at close t+1 - value at close t - net shares bought x open t+1) / alloc,
  cost-free, times the ROI multiplier ``clip(1 + roi_scale x (close[t]/entry - 1), roi_clip)`` of the
  position held at the decision (1 when flat). With ``reward.pnl_baseline: hold``, minus the symbol's
  close-to-close return ``close[t+1] / close[t] - 1``: what holding the full allocation would have made
  over the step. A position held at exactly its allocation (ROI multiplier 1) then scores 0, a flat
  symbol scores minus the market's move, and a trade has to beat holding by more than its costs. The
  subtracted return is exogenous (no action changes it), so it is a control variate: every policy's
  expected return shifts by the same amount per symbol and step, their preference ordering stays the
  same, and the market's common noise leaves a holder's reward (lower-variance advantages).
- ``cost``: -(commission + slippage) / alloc.
- ``timing``: (shares bought - shares sold) x (close[t+1] - open[t+1]) / alloc: a buy at the open
  before the bar rises, or a sale before it falls, scores positive.
- ``sharpe``: EMA-rolling Sharpe (span ``sharpe_window``) of the agent's cost-free return stream,
  clipped to +-``sharpe_clip``, while a position is held.
- ``drawdown``: -(value / alloc) x intra-trade drawdown (from the highest close since entry), and
  ``-trade_drawdown_penalty`` per step while that drawdown exceeds ``trade_drawdown_threshold``.
- ``utilization``: min(value / alloc, 1) x ``utilization_scale``.
- ``diversification``: (1 - HHI of the account's position values) x ``diversification_scale``.
- ``diversity_bonus``: the tier bonus of the distinct executed actions in the window.
- ``action_repeat_penalty``: -1 when the repetition limit forced HOLD.
- ``intrinsic_action_reward``: 1 when a non-HOLD action was executed.

Master (per env): ``risk_adjusted`` (EMA-rolling Sharpe of portfolio returns), ``diversification``
(as above) and ``excess_return`` (portfolio return - benchmark return over the bar).
"""

from __future__ import annotations

import torch

SHARPE_EPS = 1e-8
TINY = 1e-12


def ema_sharpe(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, alpha: float, clip: float
) -> torch.Tensor:
    """Update the exponentially weighted mean and variance of ``x`` in place (the stable recursion
    ``d = x - m; m += a d; v = (1 - a)(v + a d^2)``, no cancellation); return the clipped EW Sharpe."""
    delta = x - mean
    mean.add_(delta, alpha=alpha)
    var.add_(delta * delta, alpha=alpha).mul_(1.0 - alpha)
    return (mean / (var.sqrt() + SHARPE_EPS)).clamp_(-clip, clip)


def diversification(value: torch.Tensor) -> torch.Tensor:
    """``(N,)`` 1 - HHI of position values (0 with no position)."""
    total = value.sum(1)
    hhi = (value * value).sum(1) / (total * total).clamp_min(TINY)
    return (1.0 - hhi) * (total > 0)


def roi_multiplier(
    close0: torch.Tensor, entry0: torch.Tensor, roi_scale: float, lo: float, hi: float
) -> torch.Tensor:
    roi = (close0 / entry0.clamp_min(TINY) - 1.0) * (entry0 > 0)
    return (1.0 + roi_scale * roi).clamp_(lo, hi)


def symbol_components(
    *,
    out: torch.Tensor,  # (C, N, S) written in REWARD_COMPONENTS order
    pnl: torch.Tensor,  # (N, S) cost-free pnl in currency
    cost: torch.Tensor,  # (N, S)
    traded_shares: torch.Tensor,  # (N, S) bought - sold
    open1: torch.Tensor,
    close1: torch.Tensor,
    value1: torch.Tensor,  # (N, S) position value at close t+1
    trade_drawdown: torch.Tensor,  # (N, S) 0 when flat
    holding1: torch.Tensor,  # (N, S) float 0/1
    inv_alloc: torch.Tensor,  # (N, 1)
    roi_mult: torch.Tensor,  # (N, S)
    sharpe: torch.Tensor,  # (N, S) clipped EMA Sharpe (before the holding gate)
    diversification: torch.Tensor,  # (N,)
    bonus: torch.Tensor,  # (N, S)
    forced: torch.Tensor,  # (N, S) bool
    executed: torch.Tensor,  # (N, S) int64
    cfg,  # RewardConfig
    hold_return: torch.Tensor | None = None,  # (N, S) close-to-close return: the pnl baseline (or None)
) -> torch.Tensor:
    weight = value1 * inv_alloc
    torch.mul(pnl * inv_alloc, roi_mult, out=out[0])
    if hold_return is not None:
        out[0].sub_(hold_return)
    torch.mul(cost, inv_alloc, out=out[1]).neg_()
    torch.mul(traded_shares * (close1 - open1), inv_alloc, out=out[2])
    torch.mul(sharpe, holding1, out=out[3])
    beyond = (trade_drawdown - cfg.trade_drawdown_threshold).clamp_min_(0.0).sign_()
    torch.mul(weight, trade_drawdown, out=out[4]).neg_().sub_(beyond, alpha=cfg.trade_drawdown_penalty)
    torch.mul(weight.clamp_max_(1.0), cfg.utilization_scale, out=out[5])
    out[6].copy_((diversification * cfg.diversification_scale).unsqueeze(1).expand_as(out[6]))
    out[7].copy_(bonus)
    out[8].copy_(forced).neg_()
    out[9].copy_(executed).sign_()
    return out
