"""Held-out backtests of policies in the simulator, and the baselines they are judged against.

A backtest runs ``num_envs`` accounts through bars ``[lo, hi)`` as one episode (start at ``lo``, no early
termination) under the trading rules of training (masks, costs, repetition limit) and records, per bar,
what the simulator did: equity, executed actions, costs paid (commission + slippage), traded notional,
gross exposure, each symbol's net P&L and the master's directive. With ``env.initial_position:
allocation`` the episode starts invested (env/initial.py): the first row is the account before that
purchase (the initial cash, flat) and the first step carries its costs and notional. Policies map a
simulator observation to actions; provided here: the trained agent (greedy or sampled), the masked random
policy, the SL-only rule and the oracle that reads the true planted signal (synthetic data). The agents
under their master run as :class:`Directed`: each bar is :meth:`Hierarchy.decide`, the desk's decision.

Equal-weight buy-and-hold (:func:`buy_and_hold`) is not simulated step by step but filled once with the
simulator's own fill code: the decision at ``lo`` buys every symbol tradable at ``lo + 1`` for the same
notional at that bar's open, paying the same commission and slippage (fixed + volatility + impact) as any
order, then holds to the end; what the fill leaves in cash earns the cash rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hmarl.agents import distributions as dist
from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables, compact
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.actions import NUM_ACTIONS, Action
from hmarl.env.fills import execute
from hmarl.env.market import ADV, CLOSE, OPEN, SIGMA, TRADABLE, MarketData
from hmarl.env.spec import Observation
from hmarl.env.vec_env import MarketEnv
from hmarl.evaluation.metrics import edge_t, sharpe_ratio
from hmarl.evaluation.period import PolicySeries
from hmarl.sl.cache import CHANNELS

ObsPolicy = Callable[[Observation], torch.Tensor]


@dataclass(frozen=True)
class Directed:
    """The symbol agents under their master: each bar the desk's decision (:meth:`Hierarchy.decide`, the
    master where it is due, greedy), then the agents' actions chosen from it (greedy or sampled)."""

    hierarchy: Hierarchy
    greedy: bool = True
    generator: torch.Generator | None = None

    def __call__(self, env: MarketEnv, obs: Observation) -> tuple[torch.Tensor, Observation]:
        logp, obs = self.hierarchy.decide(env, obs)
        return dist.choose(logp, self.greedy, self.generator), obs


@dataclass
class Backtest:
    equity: np.ndarray  # (steps + 1, N) account equity at each close, starting with the initial cash
    executed: np.ndarray  # (steps, N, S) uint8 executed actions
    holding: np.ndarray  # (steps + 1, N, S) bool, position held after each close
    bar_returns: np.ndarray  # (steps, S) open-to-close return of each step's bar (orders fill at its open)
    bars_per_year: float
    costs: np.ndarray  # (steps, N) commission + slippage paid in the step, currency
    traded: np.ndarray  # (steps, N) traded notional at the fill (|shares bought or sold| x open)
    gross: np.ndarray  # (steps, N) gross position value at the step's close
    symbol_pnl: np.ndarray  # (steps, N, S) net P&L of each symbol in the step (after its costs), currency
    directive: np.ndarray  # (steps + 1, N) directive in force after each decision point (index)
    # the decision funnel (evaluation/exposure.py): what the policy chose, what the rules let through
    chosen: np.ndarray  # (steps, N, S) uint8 actions the policy picked
    forced: np.ndarray  # (steps, N, S) bool: the repetition limit turned the pick into HOLD
    invalid: np.ndarray  # (steps, N, S) bool: the pick was masked (became HOLD)
    buy_scale: np.ndarray  # (steps, N) share of the buy notional cash allowed (pro rata)
    # (steps, N) |notional| the master's rebalance traded (env.master.rebalance; zeros when none)
    rebalanced: np.ndarray
    risk_free: np.ndarray | None = None  # (steps,) per-bar cash rate of each step (None: 0)

    @property
    def sharpe(self) -> np.ndarray:
        """Annualized Sharpe of each account in excess of the cash rate."""
        return sharpe_ratio(self.equity, self.bars_per_year, self.risk_free)

    @property
    def total_return(self) -> np.ndarray:
        return self.equity[-1] / self.equity[0] - 1.0

    def series(self) -> PolicySeries:
        """The accounts as one portfolio (equal starting capital): mean equity and costs; turnover and
        exposure relative to the summed equity."""
        start, end = self.equity[:-1].sum(1), self.equity[1:].sum(1)
        return PolicySeries(
            self.equity.mean(1), self.traded.sum(1) / start, self.costs.mean(1), self.gross.sum(1) / end
        )

    def symbol_returns(self) -> np.ndarray:
        """``(steps, S)`` each symbol's net P&L in the step / the portfolio's equity at its start."""
        return self.symbol_pnl.sum(1) / self.equity[:-1].sum(1)[:, None]

    def action_shares(self) -> np.ndarray:
        """``(steps, 7)`` share of each executed action over accounts and symbols, per step."""
        flat = self.executed.reshape(self.executed.shape[0], -1).astype(np.int64)
        counts = np.stack([(flat == a).sum(1) for a in range(NUM_ACTIONS)], 1)
        return counts / flat.shape[1]

    def timing_excess(self) -> np.ndarray:
        """Selection skill, free of market drift, per step: the mean open-to-close return of the symbols
        held through the bar (orders decided before it fill at its open) minus the mean over all symbols,
        averaged over the accounts holding something (they trade the same bars, so together they are one
        observation per step); steps where no account holds anything are left out."""
        held = self.holding[1:]  # positions held from the fill at the bar's open to its close
        count = held.sum(-1)  # (steps, N)
        r = self.bar_returns[:, None, :]
        excess = (held * r).sum(-1) / np.maximum(count, 1) - r.mean(-1)
        accounts = (count > 0).sum(-1)
        return ((excess * (count > 0)).sum(-1) / np.maximum(accounts, 1))[accounts > 0]

    def timing_edge(self) -> tuple[float, float]:
        """Mean of :meth:`timing_excess` and its t-statistic over steps (0 when undefined)."""
        return edge_t(self.timing_excess())


def evaluation_env(
    market: MarketData, cfg: HmarlConfig, bar_range: tuple[int, int], num_envs: int, seed: int
):
    """One episode over the whole range, starting at its first bar, with no early termination."""
    lo, hi = bar_range
    env_cfg = cfg.env.model_copy(
        update={
            "episode_length": hi - lo - 1,
            "max_drawdown": 1.0,
            "bankruptcy_fraction": 0.0,
            "check_actions": True,
        }
    )
    return MarketEnv(market, env_cfg, cfg.reward, num_envs=num_envs, bar_range=(lo, hi), seed=seed)


def backtest(
    market: MarketData,
    cfg: HmarlConfig,
    bar_range: tuple[int, int],
    policy: ObsPolicy | Directed,
    num_envs: int = 1,
    seed: int = 0,
) -> Backtest:
    """``policy``: agents with their master (:class:`Directed`), or a policy alone under the env's default
    directive (``env.master.default``) throughout."""
    lo, hi = bar_range
    steps = hi - lo - 1
    env = evaluation_env(market, cfg, bar_range, num_envs, seed)
    obs = env.reset(seed=seed)
    equity, shares, directive, executed, costs, rebalanced = [], [], [], [], [], []
    funnel: dict[str, list[torch.Tensor]] = {"chosen": [], "forced": [], "invalid": [], "buy_scale": []}

    def record() -> None:
        state = env.state()
        equity.append(state["equity"].double().cpu())
        shares.append(state["shares"].double().cpu())
        directive.append(state["directive"].cpu())

    record()
    # env.initial_position: allocation bought at the first close: row 0 is the account before that purchase
    # (the initial cash, flat) and step 0 carries its costs and notional; zeros when the episode starts in cash
    entry_cost = env.entry_cost.double().cpu()  # (N, S)
    equity[0] = equity[0] + entry_cost.sum(-1)
    for _ in range(steps):
        if isinstance(policy, Directed):
            due = bool(obs.master_due.any())
            actions, obs = policy(env, obs)
            if due:
                directive[-1] = env.state()["directive"].cpu()
        else:
            actions = policy(obs)
        res = env.step(actions)
        record()
        executed.append(res.executed_action.to(torch.uint8).cpu())
        costs.append(res.info["cost"].double().cpu())
        rebalanced.append(res.info["rebalanced"].double().abs().sum(-1).cpu())
        funnel["chosen"].append(res.policy_action.to(torch.uint8).cpu())
        funnel["forced"].append(res.info["forced_hold"].bool().cpu())
        funnel["invalid"].append(res.info["invalid_action"].bool().cpu())
        funnel["buy_scale"].append(res.info["buy_scale"].double().reshape(-1).cpu())
        obs = res.obs
    close = market.table[CLOSE, lo:hi].double().cpu().numpy()  # (steps + 1, S)
    open_ = market.table[OPEN, lo + 1 : hi].double().cpu().numpy()  # fill prices, (steps, S)
    q = torch.stack(shares).numpy()  # (steps + 1, N, S)
    cost = torch.stack(costs).numpy()  # (steps, N, S)
    cost[0] += entry_cost.numpy()
    value = q * close[:, None, :]
    dq = np.diff(q, axis=0)  # a symbol either buys or sells in a step: |dq| is its traded shares
    traded = (np.abs(dq) * open_[:, None, :]).sum(-1)
    traded[0] += value[0].sum(-1)  # the initial purchase, filled at the first close
    holding = q > 0
    holding[0] = False
    return Backtest(
        equity=torch.stack(equity).numpy(),
        executed=torch.stack(executed).numpy(),
        holding=holding,
        bar_returns=close[1:] / open_ - 1.0,
        bars_per_year=market.bars_per_year,
        costs=cost.sum(-1),
        traded=traded,
        gross=value[1:].sum(-1),
        symbol_pnl=np.diff(value, axis=0) - dq * open_[:, None, :] - cost,
        directive=torch.stack(directive).numpy(),
        rebalanced=torch.stack(rebalanced).numpy(),
        risk_free=risk_free(market, bar_range),
        **{k: torch.stack(v).numpy() for k, v in funnel.items()},
    )


def risk_free(market: MarketData, bar_range: tuple[int, int]) -> np.ndarray:
    """``(steps,)`` the per-bar rate cash earns in each step of ``bar_range`` (the rate of its decision bar)."""
    lo, hi = bar_range
    return market.cash_rate[lo : hi - 1].double().cpu().numpy()


def buy_and_hold(market: MarketData, cfg: HmarlConfig, bar_range: tuple[int, int]) -> PolicySeries:
    """Equal-weight buy-and-hold over ``bar_range`` with its entry costs charged (see the module docstring):
    the whole initial cash buys the symbols tradable at ``lo + 1`` for equal notionals (pro rata after
    costs), held to the end and marked at the closes."""
    lo, hi = bar_range
    env = evaluation_env(market, cfg, bar_range, 1, 0)
    t = market.table[:, lo].unsqueeze(1)  # (5, 1, S) decision bar
    t1 = market.table[:, lo + 1].unsqueeze(1)  # fill bar
    s = market.num_symbols
    cash = torch.full((1,), cfg.env.initial_cash, dtype=market.table.dtype, device=market.device)
    # BUY_LARGE of an allocation sized so that every tradable symbol wants an equal share of the cash; the
    # fill code scales all buys by one factor so that notional + costs use exactly the cash
    tradable = t1[TRADABLE].sum().clamp_min(1.0)
    alloc = cash.view(1, 1) / tradable / cfg.env.buy_fractions[-1]
    fills = execute(
        torch.full((1, s), int(Action.BUY_LARGE), dtype=torch.int64, device=market.device),
        env.order_table,
        shares=torch.zeros(1, s, dtype=market.table.dtype, device=market.device),
        close0=t[CLOSE],
        sigma0=t[SIGMA],
        adv0=t[ADV],
        open1=t1[OPEN],
        tradable1=t1[TRADABLE].long(),
        alloc=alloc,
        buying_power=cash,
        new_slots=torch.full((1, 1), float(s), dtype=market.table.dtype, device=market.device),
        p=env.fill_params,
    )
    q = fills.q_buy[0].double().cpu().numpy()  # (S,)
    left = float((cash + fills.cash_delta)[0])
    close = market.table[CLOSE, lo + 1 : hi].double().cpu().numpy()
    value = close @ q
    steps = hi - lo - 1
    cash = left * np.cumprod(1.0 + risk_free(market, bar_range))  # the leftover earns the rate
    equity = np.concatenate([[cfg.env.initial_cash], cash + value])
    costs, turnover = np.zeros(steps), np.zeros(steps)
    costs[0] = float(fills.cost.sum())
    turnover[0] = float((fills.q_buy * t1[OPEN]).sum()) / cfg.env.initial_cash
    return PolicySeries(equity, turnover, costs, value / equity[1:])


def benchmark_series(market: MarketData, cfg: HmarlConfig, bar_range: tuple[int, int]) -> PolicySeries:
    """The benchmark close scaled to the initial cash: the market itself, fully exposed, no costs."""
    lo, hi = bar_range
    b = market.benchmark[lo:hi].double().cpu().numpy()
    steps = hi - lo - 1
    return PolicySeries(cfg.env.initial_cash * b / b[0], np.zeros(steps), np.zeros(steps), np.ones(steps))


# --------------------------------------------------------------------------- policies
def agent_policy(
    agent: SymbolAgent, tables: AgentTables, greedy: bool = True, generator: torch.Generator | None = None
) -> ObsPolicy:
    with torch.no_grad():
        projected = agent.market_projection(tables)

    @torch.no_grad()
    def act(obs: Observation) -> torch.Tensor:
        o = compact(obs)
        logits, _ = agent(o, tables, projected)
        return dist.Categorical(logits, o.mask).choose(greedy, generator)

    return act


def random_policy(generator: torch.Generator) -> ObsPolicy:
    def act(obs: Observation) -> torch.Tensor:
        logp = dist.masked_logits(torch.zeros(obs.mask.shape, device=obs.mask.device), obs.mask)
        return dist.sample(logp, generator)

    return act


def threshold_policy(signal: torch.Tensor, enter: float, exit_: float, first_bar: int = 0) -> ObsPolicy:
    """Reads a per-bar score ``signal`` (row = bar - ``first_bar``, S): when flat and ``score > enter`` buy
    the largest allowed size; when holding and ``score < exit_`` sell everything; else hold."""

    def act(obs: Observation) -> torch.Tensor:
        s = signal.index_select(0, obs.bar - first_bar).to(obs.mask.device)
        m = obs.mask
        buy = torch.where(
            m[..., Action.BUY_LARGE],
            int(Action.BUY_LARGE),
            torch.where(m[..., Action.BUY_MEDIUM], int(Action.BUY_MEDIUM), int(Action.BUY_SMALL)),
        )
        can_buy = m[..., Action.BUY_SMALL]
        action = torch.where(can_buy & (s > enter), buy, int(Action.HOLD))
        return torch.where(m[..., Action.SELL_ALL] & (s < exit_), int(Action.SELL_ALL), action)

    return act


def oracle_policy(signal: torch.Tensor, enter: float = 1.0, exit_: float = 0.0) -> ObsPolicy:
    """Knows the planted signal ``s_t`` (T, S) that predicts bar t+1's move (synthetic data only)."""
    return threshold_policy(signal, enter, exit_)


def sl_edge(sl_probs: torch.Tensor) -> torch.Tensor:
    """``(T, S)`` P(up) - P(down), each the mean over the SL models of the cache (channel order
    :data:`hmarl.sl.cache.CHANNELS`); 0 where a bar has no prediction (NaN)."""
    up = [i for i, c in enumerate(CHANNELS) if c.endswith("_up")]
    down = [i for i, c in enumerate(CHANNELS) if c.endswith("_down")]
    edge = sl_probs[..., up].float().mean(-1) - sl_probs[..., down].float().mean(-1)
    return torch.nan_to_num(edge, nan=0.0)


def sl_rule_policy(tables: AgentTables) -> ObsPolicy:
    """The SL-only rule: buy when P(up) > P(down), sell everything when P(down) > P(up), hold otherwise
    (the probabilities the agents observe at that bar)."""
    return threshold_policy(sl_edge(tables.sl), 0.0, 0.0, tables.sl_offset)
