"""One period's evaluation: the hierarchy and every baseline on the same bars, at every cost level.

:func:`evaluate_period` takes plain objects (market tensors, agent tables, the two trained agents), so the
walk-forward step (a fold's test bars) and ``hmarl evaluate`` (a loaded bundle on a new dataset) share it.
Every simulated arm starts flat at the range's first bar with ``env.initial_cash`` and runs to its last:

- ``policy``: greedy symbol agents under the greedy trained master (directive where it is due);
- ``symbol_agents``: the same agents, greedy, under their training directive (``ppo.directive``);
- ``no_master``: the same agents, greedy, under the neutral directive (``env.master.default``);
- ``sl_rule``: buy when the SL models' mean P(up) > P(down), sell all when P(down) > P(up) (training
  directive, as the agents it is the SL-only alternative to);
- ``random``: the masked random policy, ``walk_forward.eval_envs`` accounts as one portfolio (training
  directive), seeded with ``seed`` so every cost level draws the same numbers;
- ``buy_hold``: equal-weight buy-and-hold with entry commission and slippage;
- ``vol_target`` / ``trend_filter``: the passive rules of :mod:`hmarl.evaluation.passive`, same costs;
- ``benchmark``: the benchmark, no costs -- left out when the data has none (``MarketData.has_benchmark``:
  ``info["benchmark"]`` says so and the reports repeat it; nothing is put in its place).

Idle cash earns ``env.cash_rate`` in every simulated arm; the period records that per-bar rate as its
risk-free rate (``PeriodEvaluation.risk_free``), so every Sharpe of it is an excess-return Sharpe.

Cost stress changes ``env.commission_bps_round_trip`` only (slippage is a market property, unchanged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import MasterAgent, benchmark_table
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.actions import default_directive
from hmarl.env.market import MarketData
from hmarl.evaluation.backtest import (
    Directed,
    agent_policy,
    backtest,
    benchmark_series,
    buy_and_hold,
    random_policy,
    risk_free,
    sl_rule_policy,
)
from hmarl.evaluation.exposure import exposure_funnel
from hmarl.evaluation.passive import passive_series, passive_weights
from hmarl.evaluation.period import POLICY, PeriodEvaluation, PolicySeries
from hmarl.learners.stage_config import symbol_stage_config


def with_commission(cfg: HmarlConfig, bps: float) -> HmarlConfig:
    env = cfg.env.model_copy(update={"commission_bps_round_trip": float(bps)})
    return cfg.model_copy(update={"env": env})


def cost_levels(cfg: HmarlConfig) -> list[float]:
    """``walk_forward.cost_bps`` plus the base ``env.commission_bps_round_trip``, ascending."""
    return sorted({float(c) for c in cfg.walk_forward.cost_bps} | {float(cfg.env.commission_bps_round_trip)})


def iso_dates(market: MarketData, bars: tuple[int, int]) -> list[str]:
    stamps = np.asarray(market.timestamps[bars[0] : bars[1]])
    unit = {"unit": "ns"} if np.issubdtype(stamps.dtype, np.integer) else {}
    return [t.isoformat() for t in pd.to_datetime(stamps, utc=True, **unit)]


def evaluate_period(
    cfg: HmarlConfig,
    market: MarketData,
    tables: AgentTables,
    symbols: SymbolAgent,
    master: MasterAgent,
    bars: tuple[int, int],
    label: str,
    info: dict | None = None,
) -> PeriodEvaluation:
    """Evaluate on bars ``[lo, hi)`` of ``market`` (T = hi - lo - 1 steps); ``tables`` must cover them
    (the SL probabilities the agents and the SL rule read are ``tables.sl``). ``cfg`` holds the trading
    rules and costs the agents were trained with (``env``, ``reward``, ``ppo.directive``), the cost levels
    (``walk_forward.cost_bps``), the random accounts (``walk_forward.eval_envs``) and the ``seed``."""
    lo, hi = bars = (int(bars[0]), int(bars[1]))
    tables = tables.restrict(lo, hi)
    symbols = symbols.eval()
    greedy = agent_policy(symbols, tables)
    bench = benchmark_table(market.benchmark, cfg.env.master.interval).to(market.device)
    directed = Directed(Hierarchy(symbols, tables, master.eval(), bench))
    sl_rule = sl_rule_policy(tables)
    base = float(cfg.env.commission_bps_round_trip)
    passive = passive_weights(market, cfg)
    series: dict[float, dict[str, PolicySeries]] = {}
    actions = symbol_returns = directives = timing = exposure = None
    for level in cost_levels(cfg):
        neutral = with_commission(cfg, level)
        trained = symbol_stage_config(neutral)  # the agents' training directive
        gen = torch.Generator(market.device).manual_seed(cfg.seed)
        runs = {
            POLICY: backtest(market, neutral, bars, directed, 1, cfg.seed),
            "symbol_agents": backtest(market, trained, bars, greedy, 1, cfg.seed),
            "no_master": backtest(market, neutral, bars, greedy, 1, cfg.seed),
            "sl_rule": backtest(market, trained, bars, sl_rule, 1, cfg.seed),
            "random": backtest(
                market, trained, bars, random_policy(gen), cfg.walk_forward.eval_envs, cfg.seed
            ),
        }
        series[level] = {name: bt.series() for name, bt in runs.items()}
        series[level]["buy_hold"] = buy_and_hold(market, neutral, bars)
        series[level].update(passive_series(market, neutral, bars, passive))
        if market.has_benchmark:
            series[level]["benchmark"] = benchmark_series(market, neutral, bars)
        if level == base:
            policy = runs[POLICY]
            actions, symbol_returns = policy.action_shares(), policy.symbol_returns()
            directives = policy.directive[:-1, 0]  # in force at each decision
            timing = {name: bt.timing_excess().tolist() for name, bt in runs.items()}
            exposure = {n: exposure_funnel(bt, market, cfg, bars) for n, bt in runs.items() if n != "random"}
    counts = np.bincount(directives, minlength=master.num_directives)
    extra = {
        "directive_counts": counts.tolist(),
        "neutral_directive": default_directive(cfg.env),
        "training_directive": default_directive(symbol_stage_config(cfg).env),
        "random_accounts": cfg.walk_forward.eval_envs,
        "cost_stress": "env.commission_bps_round_trip varied; slippage unchanged",
        "timing_excess": timing,  # name -> per-step drift-free selection excess (Backtest.timing_excess)
        "exposure": exposure,  # name -> where the capital goes (evaluation/exposure.py), base cost
        "benchmark": "present" if market.has_benchmark else "absent: the data has no benchmark",
    }
    return PeriodEvaluation(
        label,
        bars,
        iso_dates(market, bars),
        market.bars_per_year,
        list(market.symbols),
        base,
        series,
        actions,
        symbol_returns,
        {**extra, **(info or {})},
        risk_free(market, bars),
        market.risk_free,
    )
