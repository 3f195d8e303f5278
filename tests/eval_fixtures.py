"""Evaluated periods and Stage 5 folders built directly (no training): synthetic equity paths whose edge
is chosen, so aggregation, overfitting statistics and the gate can be checked against known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hmarl.evaluation.params import GateConfig
from hmarl.evaluation.period import BASELINES, POLICY, PeriodEvaluation, PolicySeries
from hmarl.evaluation.stage5_checklist import STAGE5_VALUE_NAMES
from hmarl.io import write_json

# every section of the evaluation report (hmarl.evaluation.report), in its order
REPORT_SECTIONS = (
    "Gate",
    "Metrics",
    "Value vs passive investing",
    "Overfitting",
    "Equity",
    "Drawdowns",
    "Action mix over time",
    "Entropy",
    "Reward component contributions",
    "Per-symbol Sharpe",
    "Folds",
    "Cost stress",
    "Stress windows",
    "Cross-seed telemetry",
)
BPY = 252.0
COSTS = (0.0, 15.0, 30.0, 50.0)
BASE = 15.0
# mean bar return of each name (vol 1 %): the policy and symbol agents have an edge, the rest do not
EDGE = {POLICY: 0.003, "symbol_agents": 0.0025, "no_master": 0.0, "buy_hold": 0.0003, "benchmark": 0.0003}
LEVERAGE = {"no_master": 2.5}  # the master's job: the no-master arm runs the same bets with more risk


def bar_dates(start: str, n: int) -> list[str]:
    return [str(np.datetime64(start) + i) for i in range(n)]


def make_period(
    label: str,
    lo: int,
    t: int,
    start: str,
    seed: int,
    edge: dict[str, float] | None = None,
    symbols: int = 5,
    bpy: float = BPY,
    risk_free: float = 0.0,
) -> PeriodEvaluation:
    """A period of ``t`` bars starting at bar ``lo`` / date ``start``: every name of POLICY + BASELINES at
    every cost level. The policy's bar return is the sum of its per-symbol P&L minus costs."""
    rng = np.random.default_rng(seed)
    edge = {**EDGE, **(edge or {})}
    share = np.linspace(-0.5, 1.5, symbols)
    sym_mu = (
        share / share.sum() * edge[POLICY]
    )  # the policy's edge, growing from the first symbol to the last
    symbol_returns = rng.normal(sym_mu, 0.01 / np.sqrt(symbols), size=(t, symbols))
    gross = {POLICY: symbol_returns.sum(1)}
    for name in BASELINES:
        gross[name] = rng.normal(edge.get(name, 0.0), 0.01, t) * LEVERAGE.get(name, 1.0)
    turnover = {n: (0.0 if n == "benchmark" else 0.3) * np.abs(rng.normal(1.0, 0.2, t)) for n in gross}
    series = {}
    for cost in COSTS:
        by_name = {}
        for name, r in gross.items():
            frac = turnover[name] * cost * 1e-4 / 2
            equity = 1e6 * np.cumprod(np.r_[1.0, 1.0 + r - frac])
            by_name[name] = PolicySeries(equity, turnover[name], frac * equity[:-1], np.full(t, 0.8))
        series[cost] = by_name
    actions = rng.dirichlet(np.ones(7), size=t)
    # drift-free selection excess per step: the names' edge above the market's (benchmark) drift
    timing = {n: rng.normal(edge.get(n, 0.0) - edge["benchmark"], 0.01, t).tolist() for n in gross}
    return PeriodEvaluation(
        label,
        (lo, lo + t + 1),
        bar_dates(start, t + 1),
        bpy,
        [f"S{i}" for i in range(symbols)],
        BASE,
        series,
        actions,
        symbol_returns,
        {"timing_excess": timing},
        np.full(t, risk_free),
        f"constant {risk_free * bpy:g} a year",
    )


def make_folds(
    n: int = 3, t: int = 120, start: str = "2019-11-01", seed: int = 0, **kw
) -> list[PeriodEvaluation]:
    """``n`` consecutive folds of ``t`` bars (fold k's dates follow fold k-1's)."""
    return [
        make_period(f"fold_{k}", k * (t + 1), t, str(np.datetime64(start) + k * (t + 1)), seed + k, **kw)
        for k in range(n)
    ]


def passing_seed_values(gate: GateConfig) -> dict[str, float]:
    """Stage 5 values comfortably on the passing side of every criterion."""
    out = {}
    for name in STAGE5_VALUE_NAMES:
        c = gate.criteria[name]
        out[name] = c.threshold + (0.05 if c.op in (">", ">=") else -0.05)
    out["training_nonfinite_updates"] = 0.0
    out["policy_action_entropy_mean"] = 0.9
    return out


def telemetry_series(seed: int, updates: int = 20) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "global_step": float(512 * (i + 1)),
            "policy_action_entropy_mean": 1.6 - 0.03 * i + 0.01 * rng.normal(),
            "executed_action_entropy_mean": 1.4 - 0.03 * i,
            "component_pnl": 0.01 + 0.001 * rng.normal(),
            "component_cost": -0.002,
            "component_diversity_bonus": 0.08,
        }
        for i in range(updates)
    ]


def write_stage5(folder: Path, seeds, values: dict[str, float], overrides: dict | None = None) -> None:
    """``folder/seed_<s>/{values.json, telemetry.json}``; ``overrides``: seed -> {key: value or None}."""
    for s in seeds:
        d = folder / f"seed_{s}"
        d.mkdir(parents=True)
        write_json(d / "values.json", {**values, **(overrides or {}).get(s, {})})
        write_json(d / "telemetry.json", {"series": telemetry_series(s)})


def write_walk_forward(folder: Path, periods: list[PeriodEvaluation]) -> None:
    for p in periods:
        p.save(folder / p.label)
