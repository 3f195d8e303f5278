"""Phases 2-4 of :meth:`hmarl.env.vec_env.MarketEnv.step` on the torch backend (see vec_env.py for the
timing of a step): the fill at open t+1 and the mark at close t+1, then the step's rewards. They update the
env's state tensors in place, in the order native_step.c follows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hmarl.env.fills import Fills, execute
from hmarl.env.market import CLOSE, OPEN, TRADABLE
from hmarl.env.params import REWARD_COMPONENTS
from hmarl.env.rebalance import rebalance_orders, rebalanced_notional
from hmarl.env.rewards import TINY, diversification, ema_sharpe, symbol_components


class Moved(NamedTuple):
    """The step's fill and mark (phases 2-3), as the rewards and the episode ends read them."""

    t1: torch.Tensor  # (N,) the new bar
    open1: torch.Tensor  # (N, S) prices of bar t+1
    close1: torch.Tensor
    close0: torch.Tensor  # (N, S) close of bar t
    shares0: torch.Tensor  # (N, S) before the fill
    fills: Fills
    holding1: torch.Tensor  # (N, S) float 0/1 after the fill
    value1: torch.Tensor  # (N, S) marked at close t+1
    equity0: torch.Tensor  # (N,) before the step
    drawdown: torch.Tensor  # (N,) after the mark
    financing: torch.Tensor  # (N,) net financing charged for the bar
    rebalanced: torch.Tensor  # (N, S) signed notional the master's rebalance traded (env/rebalance.py)


def fill_and_mark(env, decided: torch.Tensor, ctx: dict) -> Moved:
    """2. Fill at open t+1 (positions, entry, peak and holding time updated), 3. financing, then the
    account marked at close t+1."""
    t1 = (env.t + 1).clamp_(max=env.market.num_bars - 1)
    row1 = env.market.table.index_select(1, t1)  # (5, N, S)
    open1, close1 = row1[OPEN], row1[CLOSE]
    close0, entry0 = ctx["close"], env.entry
    shares0 = env.shares.clone()
    tradable1 = row1[TRADABLE]
    extra_sell, extra_buy = rebalance_orders(env, decided, ctx, tradable1)
    fills = execute(
        decided,
        env.order_table,
        shares=shares0,
        close0=close0,
        sigma0=ctx["sigma"],
        adv0=ctx["adv"],
        open1=open1,
        tradable1=tradable1.long(),
        alloc=ctx["alloc"],
        buying_power=ctx["buying_power"],
        new_slots=ctx["new_slots"],
        p=env.fill_params,
        extra_sell=extra_sell,
        extra_buy=extra_buy,
    )
    rebalanced = rebalanced_notional(fills, open1, extra_sell, extra_buy)
    remaining = shares0 - fills.q_sell
    torch.add(remaining, fills.q_buy, out=env.shares)
    holding1 = torch.sign(env.shares)  # float 0/1: shares are >= 0
    still = torch.sign(remaining)
    torch.div(remaining * entry0 + fills.q_buy * fills.px_buy, env.shares.clamp_min(TINY), out=env.entry)
    # highest of the average entry price and the closes since the position was opened
    peak = torch.maximum(env.peak_px * still, env.entry)
    torch.maximum(peak, close1, out=env.peak_px).mul_(holding1)
    env.hold.add_(1.0).mul_(holding1)

    # 3. financing on negative cash less interest on positive cash (net, may be < 0), then mark at close t+1
    env.cash.add_(fills.cash_delta)
    interest = env.cash.clamp_min(0.0) * env.market.cash_rate.index_select(0, env.t)
    financing = (-env.cash).clamp_min_(0.0).mul_(env.financing_per_bar).sub_(interest)
    env.cash.sub_(financing)
    value1 = env.shares * close1
    equity0 = env.equity.clone()
    torch.add(env.cash, value1.sum(1), out=env.equity)
    torch.maximum(env.peak_eq, env.equity, out=env.peak_eq)
    drawdown = 1.0 - env.equity / env.peak_eq
    torch.maximum(env.max_dd, drawdown, out=env.max_dd)
    return Moved(
        t1, open1, close1, close0, shares0, fills, holding1, value1, equity0, drawdown, financing, rebalanced
    )


def step_rewards(env, m: Moved, ctx: dict, valid: torch.Tensor, forced: torch.Tensor):
    """4. Rewards of the step t -> t+1 and the anti-collapse window update; the step's telemetry sums go
    to the rows of ``env._buf`` after the components. Returns ``(reward, components, master_reward,
    master_components)``."""
    n, s, c = env.num_envs, env.num_symbols, len(REWARD_COMPONENTS)
    fills, executed = m.fills, m.fills.executed
    value0 = m.shares0 * m.close0
    pnl = m.value1 - value0 - (fills.q_buy - fills.q_sell) * m.open1
    inv_alloc = 1.0 / ctx["alloc"]
    sharpe = ema_sharpe(pnl * inv_alloc, env.ema_m, env.ema_v, env.alpha, env.rcfg.sharpe_clip)
    trade_dd = (1.0 - m.close1 / env.peak_px.clamp_min(TINY)) * m.holding1
    unique, entering = env.window.push(executed, env.k)
    buf = env._buf
    torch.eq(env.seen & entering, 0, out=buf[c + 4])  # first execution of this action in the episode
    env.seen.bitwise_or_(entering)
    div = diversification(m.value1)
    components = symbol_components(
        out=buf[:c],
        pnl=pnl,
        cost=fills.cost,
        traded_shares=fills.q_buy - fills.q_sell,
        open1=m.open1,
        close1=m.close1,
        value1=m.value1,
        trade_drawdown=trade_dd,
        holding1=m.holding1,
        inv_alloc=inv_alloc,
        roi_mult=ctx["roi_mult"],
        sharpe=sharpe,
        diversification=div,
        bonus=env.tiers.index_select(0, unique.view(-1)).view(n, s),
        forced=forced,
        executed=executed,
        cfg=env.rcfg,
        hold_return=m.close1 / m.close0 - 1.0 if env.rcfg.pnl_baseline == "hold" else None,
    )
    reward = buf[c]
    torch.mv(components.view(c, -1).t(), env.weights, out=reward.view(-1))
    buf[c + 1].copy_(fills.cost)
    torch.mul(fills.q_buy + fills.q_sell, m.open1, out=buf[c + 2])
    buf[c + 3].copy_(~valid)
    port_ret = env.equity / m.equity0 - 1.0
    bench = env.market.benchmark
    excess = port_ret - (bench.index_select(0, m.t1) / bench.index_select(0, env.t) - 1.0)
    port_sharpe = ema_sharpe(port_ret, env.port_m, env.port_v, env.alpha, env.rcfg.sharpe_clip)
    utility = port_ret - 0.5 * env.rcfg.risk_aversion * port_ret.square()  # mean-variance, per bar
    master_components = torch.stack([port_sharpe, div * env.rcfg.diversification_scale, excess, utility])
    return reward, components, env.master_weights @ master_components, master_components
