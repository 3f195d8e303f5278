"""Where the capital goes: a backtest's exposure taken apart into the limits the rules set and the choices
the agents make.

The gross exposure of an account after a step is, exactly,

    exposure = slot_use x (open limit x cap x risk) x sizing

- ``open limit x cap x risk`` is the most the master's directive lets the agents invest (the open-position
  limit of its mode, counted over the symbols tradable at the decision, times the per-position allocation);
  ``ceiling`` is that capped at 1 (a long-only cash account cannot invest more than its equity);
- ``slot_use``: the share of the open-position slots the agents fill (held symbols / open limit);
- ``sizing``: the average position's value relative to the allowed allocation (a BUY_SMALL fills 25 %).

Next to it, the decision funnel of the symbol agents: the shares of HOLD / buy / add / sell picks, how many
picks the masks refused or the repetition limit turned into HOLD, how much of the buy notional cash allowed
(``buy_scale``), how long positions are held, and what the master's rebalance traded (``rebalance_turnover``,
its notional per bar relative to equity; 0 unless ``env.master.rebalance`` is on). Reported per walk-forward fold for the policy and its
ablations (walk_forward's ``exposure`` section), so "the policy stays in cash" comes with its reason.
"""

from __future__ import annotations

import numpy as np

from hmarl.config import HmarlConfig
from hmarl.env.actions import BUY_ACTIONS, SELL_ACTIONS, Action, directive_table
from hmarl.env.market import TRADABLE, MarketData
from hmarl.env.vol_prior import cap_scaling
from hmarl.evaluation.backtest import Backtest

FIELDS = (
    "exposure",
    "ceiling",
    "ceiling_used",
    "slot_use",
    "sizing",
    "held_symbols",
    "pick_hold",
    "pick_buy",
    "pick_add",
    "pick_sell",
    "masked",
    "forced_hold",
    "buy_scale",
    "holding_bars",
    "rebalance_turnover",
)


def _directive_limits(bt: Backtest, market: MarketData, cfg: HmarlConfig, lo: int) -> tuple[np.ndarray, ...]:
    """``(steps, N)`` effective open limit and per-position allocation (fraction of equity) in force."""
    steps = bt.executed.shape[0]
    table = directive_table(cfg.env, len(market.symbols), market.table.dtype, market.table.device)
    table = table.double().cpu().numpy()  # (G, 3) risk, cap, open limit
    d = table[bt.directive[:steps]]  # (steps, N, 3)
    tradable = market.table[TRADABLE, lo : lo + steps].double().cpu().numpy().sum(1)  # (steps,)
    limit = np.minimum(d[..., 2], tradable[:, None])
    scale, ceiling = cap_scaling(cfg.env, market)  # caps per bar under cap_unit: vol_target
    cap = np.minimum(d[..., 1] * scale[lo : lo + steps].double().cpu().numpy()[:, None], ceiling)
    return limit, d[..., 0] * cap


def _holding_bars(holding: np.ndarray) -> float:
    """Mean length of a position in bars: position-steps held / positions opened (0 if none opened)."""
    opened = (holding[1:] & ~holding[:-1]).sum()
    return float(holding[1:].sum() / opened) if opened else 0.0


def exposure_funnel(bt: Backtest, market: MarketData, cfg: HmarlConfig, bars: tuple[int, int]) -> dict:
    """The decomposition above and the decision funnel, averaged over the steps and accounts of ``bt``."""
    limit, alloc = _directive_limits(bt, market, cfg, int(bars[0]))
    cap = cfg.env.max_leverage if cfg.env.allow_leverage else 1.0
    exposure = bt.gross / bt.equity[1:]  # (steps, N)
    held = bt.holding[1:].sum(-1)  # (steps, N)
    ceiling = float(np.minimum(limit * alloc, cap).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        sizing = np.where(held > 0, exposure / (held * alloc), np.nan)
    chosen = bt.chosen.astype(np.int64)
    buying = np.isin(bt.executed, BUY_ACTIONS + (Action.ADD_TO_WINNER,)).any(-1)
    return {
        "exposure": float(exposure.mean()),
        "ceiling": ceiling,
        "ceiling_used": float(exposure.mean() / max(ceiling, 1e-12)),
        "slot_use": float((held / np.maximum(limit, 1.0)).mean()),
        "sizing": float(np.nanmean(sizing)) if np.isfinite(sizing).any() else 0.0,
        "held_symbols": float(held.mean()),
        "pick_hold": float((chosen == Action.HOLD).mean()),
        "pick_buy": float(np.isin(chosen, BUY_ACTIONS).mean()),
        "pick_add": float((chosen == Action.ADD_TO_WINNER).mean()),
        "pick_sell": float(np.isin(chosen, SELL_ACTIONS).mean()),
        "masked": float(bt.invalid.mean()),
        "forced_hold": float(bt.forced.mean()),
        "buy_scale": float(bt.buy_scale[buying].mean()) if buying.any() else 1.0,
        "holding_bars": _holding_bars(bt.holding),
        "rebalance_turnover": float((bt.rebalanced / bt.equity[:-1]).mean()),
    }
