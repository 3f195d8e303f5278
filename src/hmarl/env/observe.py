"""The observation of bar ``t`` (state after its close) and the decision context its step needs.

Step 7 of :class:`hmarl.env.vec_env.MarketEnv` (the torch backend; native_step.c computes the same): the
per-agent and portfolio features of env/spec.py, the directive's features, the recent-action counts and the
action masks for the next decision. The context (masks, prices, allocation, buying power, open slots, ROI
multiplier) is what the fill and the rewards of the next step read.
"""

from __future__ import annotations

import torch

from hmarl.env import masks as masks_mod
from hmarl.env.fills import positive
from hmarl.env.market import ADV, CLOSE, SIGMA, TRADABLE
from hmarl.env.rewards import SHARPE_EPS, TINY, roi_multiplier
from hmarl.env.spec import AGENT_FEATURES, Observation
from hmarl.env.vol_prior import allocation


def observe(env) -> tuple[Observation, dict[str, torch.Tensor]]:
    """``(observation, decision context)`` of ``env`` (a :class:`~hmarl.env.vec_env.MarketEnv`) at its bar."""
    cfg = env.cfg
    row = env.market.table.index_select(1, env.t)
    close, tradable = row[CLOSE], row[TRADABLE]
    d = env.directives.index_select(0, env.directive)  # (N, 3) risk, cap, limit
    equity = env.equity
    cap, alloc = allocation(env, d)  # d[:, 1] scaled per bar under cap_unit: vol_target
    holding = torch.sign(env.shares)  # float 0/1: shares are >= 0
    value = env.shares * close
    open_count = holding.sum(1, keepdim=True)
    limit = d[:, 2:3]
    buying_power = env.cash + env.lev_room * equity
    mask = masks_mod.action_masks(
        table=env.mask_table,
        holding=holding,
        tradable=tradable,
        close=close,
        entry=env.entry,
        value=value,
        alloc=alloc,
        buying_power=buying_power.unsqueeze(1),
        room_for_new=positive(limit - open_count),
        buy_fracs=env.buy_fracs,
        fee=cfg.fee_rate,
        add_fraction=cfg.add_fraction,
        min_order_fraction=cfg.min_order_fraction,
        winner_threshold=cfg.winner_threshold,
    )
    ctx = {
        "mask": mask,
        "close": close,
        "sigma": row[SIGMA],
        "adv": row[ADV],
        "alloc": alloc,
        "buying_power": buying_power,
        "new_slots": limit - open_count,
        "roi_mult": roi_multiplier(close, env.entry, env.rcfg.roi_scale, *env.rcfg.roi_clip),
    }
    agent = _agent_features(env, row, value, alloc, holding)
    master_due = (env.k % cfg.master.interval) == 0
    ctx.update(value=value, master_due=master_due)  # the master's rebalance reads them (env/rebalance.py)
    portfolio = _portfolio_features(env, value, open_count.squeeze(1) / limit.squeeze(1), master_due)
    directive_features = torch.stack([d[:, 0], cap, d[:, 2] / env.num_symbols], 1).float()
    counts = env.window.recent_counts()
    obs = Observation(
        env.t.clone(),
        agent,
        portfolio,
        env.market.regime.index_select(0, env.t),
        env.directive.clone(),
        directive_features,
        counts,
        mask,
        master_due,
    )
    return obs, ctx


def _agent_features(env, row: torch.Tensor, value: torch.Tensor, alloc: torch.Tensor, holding: torch.Tensor):
    """(N, S, len(AGENT_FEATURES)) float32, a feature-major view."""
    close, cfg = row[CLOSE], env.cfg
    inv_eq = 1.0 / env.equity.clamp_min(TINY).unsqueeze(1)
    agent = torch.empty(len(AGENT_FEATURES), *close.shape, dtype=torch.float32, device=env.device)
    torch.mul(value, inv_eq, out=agent[0])
    torch.div(value, alloc, out=agent[1])
    torch.mul(env.entry / close - 1.0, holding, out=agent[2])
    torch.mul((close - env.entry) * env.shares, inv_eq, out=agent[3])
    torch.mul(env.hold, 1.0 / cfg.episode_length, out=agent[4])
    torch.mul(1.0 - close / env.peak_px.clamp_min(TINY), holding, out=agent[5])
    agent[6].copy_(row[TRADABLE])
    return agent.permute(1, 2, 0)


def _portfolio_features(env, value: torch.Tensor, open_fraction: torch.Tensor, master_due: torch.Tensor):
    """(N, len(PORTFOLIO_FEATURES)) float32."""
    equity, clip = env.equity, env.rcfg.sharpe_clip
    sd = env.port_v.sqrt()
    return torch.stack(
        [
            env.cash / equity.clamp_min(TINY),
            value.sum(1) / equity.clamp_min(TINY),
            1.0 - equity / env.peak_eq,
            (env.port_m / (sd + SHARPE_EPS)).clamp(-clip, clip),
            open_fraction,
            env.k / env.cfg.episode_length,
            master_due.to(env.dtype),
        ],
        1,
    ).float()
