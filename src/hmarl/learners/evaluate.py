"""Held-out backtests of symbol-agent policies in the simulator, and the baselines they are judged against.

A backtest runs ``num_envs`` accounts through bars ``[lo, hi)`` as one episode (start at ``lo``, no early
termination) under the trading rules of training (masks, costs, repetition limit), and returns the equity
paths. Policies map a simulator observation to actions; provided here: the trained agent (greedy or
sampled), the masked random policy, and the oracle that reads the true planted signal (synthetic data).
Equal-weight buy-and-hold is computed from closes (no costs: the most favourable version of it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, compact
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.actions import Action
from hmarl.env.market import CLOSE, OPEN, MarketData
from hmarl.env.vec_env import MarketEnv, Observation
from hmarl.evaluation.metrics import sharpe_ratio

ObsPolicy = Callable[[Observation], torch.Tensor]


@dataclass
class Backtest:
    equity: np.ndarray  # (steps + 1, N) account equity at each close, starting with the initial cash
    executed: np.ndarray  # (steps, N, S) uint8 executed actions
    holding: np.ndarray  # (steps + 1, N, S) bool, position held after each close
    bar_returns: np.ndarray  # (steps, S) open-to-close return of each step's bar (orders fill at its open)
    bars_per_year: float

    @property
    def sharpe(self) -> np.ndarray:
        return sharpe_ratio(self.equity, self.bars_per_year)

    @property
    def total_return(self) -> np.ndarray:
        return self.equity[-1] / self.equity[0] - 1.0

    def timing_edge(self) -> tuple[float, float]:
        """Selection skill, free of market drift: per step, the mean open-to-close return of the symbols
        held through the bar (orders decided before it fill at its open) minus the mean over all symbols,
        averaged over the accounts holding something (they trade the same bars, so together they are one
        observation per step). Returns the mean of that series and its t-statistic over steps (0 when
        undefined)."""
        held = self.holding[1:]  # positions held from the fill at the bar's open to its close
        count = held.sum(-1)  # (steps, N)
        r = self.bar_returns[:, None, :]
        excess = (held * r).sum(-1) / np.maximum(count, 1) - r.mean(-1)
        accounts = (count > 0).sum(-1)
        excess = ((excess * (count > 0)).sum(-1) / np.maximum(accounts, 1))[accounts > 0]
        if excess.size < 3 or excess.std(ddof=1) == 0:
            return 0.0, 0.0
        return float(excess.mean()), float(excess.mean() / excess.std(ddof=1) * np.sqrt(excess.size))


def backtest(
    market: MarketData,
    cfg: HmarlConfig,
    bar_range: tuple[int, int],
    policy: ObsPolicy,
    num_envs: int = 1,
    seed: int = 0,
    director: ObsPolicy | None = None,
) -> Backtest:
    """``director``: the master (obs -> directive ids), consulted where it is due; None keeps the
    default (neutral) directive throughout."""
    lo, hi = bar_range
    steps = hi - lo - 1
    env_cfg = cfg.env.model_copy(
        update={
            "episode_length": steps,
            "max_drawdown": 1.0,
            "bankruptcy_fraction": 0.0,
            "check_actions": True,
        }
    )
    env = MarketEnv(market, env_cfg, cfg.reward, num_envs=num_envs, bar_range=(lo, hi), seed=seed)
    obs = env.reset(seed=seed)
    equity, executed, holding = [], [], []

    def record() -> None:
        state = env.state()
        equity.append(state["equity"].double().cpu())
        holding.append((state["shares"] > 0).cpu())

    record()
    for _ in range(steps):
        if director is not None and bool(obs.master_due.any()):
            obs = env.set_directive(director(obs))
        res = env.step(policy(obs))
        record()
        executed.append(res.executed_action.to(torch.uint8).cpu())
        obs = res.obs
    close = market.table[CLOSE, lo + 1 : hi].double().cpu().numpy()
    open_ = market.table[OPEN, lo + 1 : hi].double().cpu().numpy()
    return Backtest(
        torch.stack(equity).numpy(),
        torch.stack(executed).numpy(),
        torch.stack(holding).numpy(),
        close / open_ - 1.0,
        market.bars_per_year,
    )


def buy_and_hold_equity(market: MarketData, bar_range: tuple[int, int]) -> np.ndarray:
    """``(steps + 1,)`` value of an equal-weight buy-and-hold of every symbol over the backtest's closes."""
    lo, hi = bar_range
    close = market.table[CLOSE, lo:hi].double().cpu().numpy()
    return (close / close[0]).mean(1)


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
        logp = dist.masked_logits(logits.float(), o.mask)
        return logp.argmax(-1) if greedy else dist.sample(logp, generator)

    return act


def random_policy(generator: torch.Generator) -> ObsPolicy:
    def act(obs: Observation) -> torch.Tensor:
        logp = dist.masked_logits(torch.zeros(obs.mask.shape, device=obs.mask.device), obs.mask)
        return dist.sample(logp, generator)

    return act


def oracle_policy(signal: torch.Tensor, enter: float = 1.0, exit_: float = 0.0) -> ObsPolicy:
    """Knows the planted signal ``s_t`` (T, S) that predicts bar t+1's move: when flat and ``s_t > enter``
    buy the largest allowed size; when holding and ``s_t < exit_`` sell everything; else hold."""

    def act(obs: Observation) -> torch.Tensor:
        s = signal.index_select(0, obs.bar).to(obs.mask.device)
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
