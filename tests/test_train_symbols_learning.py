"""It must learn: PPO symbol agents on synthetic markets built by the real upstream steps, judged on the
held-out test bars of the fold (bars neither the agents nor the SL models / encoder behind their inputs
trained on), in the simulator with its costs and rules.

Setup (stated, shared by both markets): ``tests/symbol_fixtures.LEARN`` (12 symbols, planted IC 0.3, a
250-bar test window), the smoke-size agent (trunk 64, heads 64 -> 32), 16 envs x 128 steps, 12,800 env
steps, lr 1e-3, gamma = lambda = 0.9, reward weights pnl 10 / cost 10 / diversity bonus 0.1 / repeat
penalty 0.05, the master's directive fixed to "aggressive" (no open-position limit: the master is not
trained yet), the exploration stack and the SL prior at their defaults.

- ``planted_alpha``: the greedy agent beats equal-weight buy-and-hold and the masked random policy in
  Sharpe, reaches at least ``ORACLE_FRACTION`` of the oracle's Sharpe (the oracle buys when the true
  planted signal s_t > 1 and sells when s_t < 0), and its holdings earn a significant drift-free excess
  return (timing edge t > 3).
- ``random_walk``: no significant edge (timing edge |t| < 3, Sharpe not significantly above buy-and-hold)
  and the anti-collapse checklist holds: no executed action above 60 %, policy entropy not collapsed.

The gate on the same agents (a short master, the walk-forward evaluation of the fold, Stage 5 for seed 42
— resuming the finished training run, so no second training — and the gate step): ``planted_alpha``
passes the learning criteria (walk-forward Sharpe of the symbol agents > 0.6, selection edge t > 3),
``random_walk`` is no-go with the learning tier among its failures.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from hmarl.agents.data import load_training_data
from hmarl.evaluation.backtest import backtest, oracle_policy
from hmarl.evaluation.gate import verdict_from_dict
from hmarl.io import read_json
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import LEARN, build_upstream, market_config, planted_signal  # noqa: E402

pytestmark = pytest.mark.integration  # default suite: ~1-2 min on 2 cores

ORACLE_FRACTION = 0.4
LEARNING = [
    "agent.trunk_dim=64",
    "agent.hidden=32",
    "env.num_envs=16",
    "env.episode_length=256",
    "ppo.num_steps=128",
    "ppo.total_steps=12800",
    "ppo.lr=0.001",
    "ppo.gamma=0.9",
    "ppo.gae_lambda=0.9",
    "ppo.progress=false",
    "reward.weights=proof",
    "reward.weight_sets.proof.pnl=10",
    "reward.weight_sets.proof.cost=10",
    "reward.weight_sets.proof.diversity_bonus=0.1",
    "reward.weight_sets.proof.action_repeat_penalty=0.05",
    "env.master.default=[2,1,2]",
]


GATE = [
    "master.total_steps=640",
    "master.num_steps=32",
    "stage5.seeds=[42]",
    "stage5.total_steps=12800",  # = ppo.total_steps: Stage 5 of seed 42 resumes the finished run
    "walk_forward.folds=[0]",
]


def trained(tmp_path_factory, mode: str):
    root = tmp_path_factory.mktemp(mode)
    cfg = market_config(LEARN, mode, *LEARNING, *GATE, f"ppo.checkpoint_dir={root / 'checkpoints'}")
    inputs = build_upstream(root, cfg)
    metrics = execute("train_symbols", cfg, inputs, {"model": str(root / "symbols")})
    return cfg, inputs, metrics, root / "symbols"


def gate_verdict(cfg, inputs: dict, symbols: Path):
    """The downstream steps on these agents, as the pipeline runs them; returns the gate's verdict."""
    root = symbols.parent
    cfg = cfg.model_copy(
        update={"master": cfg.master.model_copy(update={"checkpoint_dir": str(root / "master_ck")})}
    )
    models = {**inputs, "symbols": str(symbols), "master": str(root / "master")}
    execute("train_master", cfg, {**inputs, "symbols": str(symbols)}, {"model": models["master"]})
    execute("walk_forward", cfg, models, {"evaluation": str(root / "wf" / "fold_0")})
    execute("stage5", cfg, inputs, {"run": str(root / "stage5" / "seed_42")})
    reports = {"stage5": str(root / "stage5"), "walk_forward": str(root / "wf")}
    execute("gate", cfg, reports, {"report": str(root / "gate"), "plots": str(root / "plots")})
    return verdict_from_dict(read_json(root / "gate" / "gate.json"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return trained(tmp_path_factory, "planted_alpha")


@pytest.fixture(scope="module")
def random_walk(tmp_path_factory):
    return trained(tmp_path_factory, "random_walk")


def report(name: str, figures: dict) -> None:
    print(
        f"\n{name}: "
        + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})
    )


def test_planted_alpha_agents_beat_the_baselines_and_reach_a_share_of_the_oracle(planted):
    cfg, inputs, metrics, out = planted
    evaluation = read_json(out / "evaluation.json")
    data = load_training_data(cfg, {k: Path(v) for k, v in inputs.items()})
    oracle = backtest(
        data.market(cfg, torch.device("cpu")),
        cfg,
        data.fold.test,
        oracle_policy(planted_signal(cfg, inputs["store"]), enter=1.0, exit_=0.0),
    )
    agent, oracle_sharpe = evaluation["agent"]["sharpe"], float(oracle.sharpe[0])
    report(
        "planted_alpha",
        {
            "sharpe_agent": agent,
            "sharpe_agent_sampled": evaluation["agent_sampled"]["sharpe"],
            "sharpe_buy_hold": evaluation["buy_hold"]["sharpe"],
            "sharpe_random": evaluation["random"]["sharpe"],
            "sharpe_oracle": oracle_sharpe,
            "oracle_fraction": agent / oracle_sharpe,
            "timing_edge_t_agent": evaluation["agent"]["timing_edge_t"],
            "timing_edge_t_oracle": oracle.timing_edge()[1],
            "return_agent": evaluation["agent"]["total_return"],
            "test_bars": evaluation["bars"],
        },
    )
    assert oracle_sharpe > 1.0  # the planted signal is there to be learned
    assert agent > evaluation["buy_hold"]["sharpe"]
    assert agent > evaluation["random"]["sharpe"]
    assert agent >= ORACLE_FRACTION * oracle_sharpe
    assert evaluation["agent"]["timing_edge_t"] > 3.0


def test_random_walk_shows_no_edge_and_no_collapse(random_walk):
    cfg, _, metrics, out = random_walk
    evaluation = read_json(out / "evaluation.json")
    last = read_json(out / "telemetry.json")["series"][-1]
    executed = {
        k.removeprefix("executed_fraction_"): v for k, v in last.items() if k.startswith("executed_fraction_")
    }
    sampled_shares = evaluation["agent_sampled"]["executed_shares"]
    n_bars = evaluation["bars"][1] - evaluation["bars"][0] - 1
    bars_per_year = 365.25 * 5 / 7
    se_difference = math.sqrt(2 * bars_per_year / n_bars)  # of two annualized Sharpe ratios, roughly
    report(
        "random_walk",
        {
            "sharpe_agent": evaluation["agent"]["sharpe"],
            "sharpe_agent_sampled": evaluation["agent_sampled"]["sharpe"],
            "sharpe_buy_hold": evaluation["buy_hold"]["sharpe"],
            "sharpe_random": evaluation["random"]["sharpe"],
            "timing_edge_t_agent": evaluation["agent"]["timing_edge_t"],
            "timing_edge_t_sampled": evaluation["agent_sampled"]["timing_edge_t"],
            "train_policy_entropy": last["policy_action_entropy_mean"],
            "train_max_executed_share": max(executed.values()),
            "backtest_sampled_max_executed_share": max(sampled_shares.values()),
        },
    )
    # no significant edge
    assert abs(evaluation["agent"]["timing_edge_t"]) < 3.0
    assert abs(evaluation["agent_sampled"]["timing_edge_t"]) < 3.0
    assert evaluation["agent"]["sharpe"] - evaluation["buy_hold"]["sharpe"] < 2 * se_difference
    # anti-collapse checklist, on the last training rollout and on the sampled held-out backtest
    assert max(executed.values()) <= 0.60
    assert max(sampled_shares.values()) <= 0.60
    assert last["policy_action_entropy_mean"] >= 0.20
    assert metrics["policy_action_entropy_mean"] >= 0.20


def test_gate_passes_the_learning_criterion_on_planted_alpha(planted):
    cfg, inputs, _, symbols = planted
    verdict = gate_verdict(cfg, inputs, symbols)
    learning = {c.name: c for c in verdict.criteria if c.tier == "learning"}
    report("planted_alpha gate", {c.name: c.value for c in verdict.criteria} | {"decision": verdict.decision})
    assert learning and all(c.passed for c in learning.values())
    assert learning["symbol_walk_forward_sharpe"].value > 0.6


def test_gate_says_no_go_on_random_walk(random_walk):
    cfg, inputs, _, symbols = random_walk
    verdict = gate_verdict(cfg, inputs, symbols)
    report("random_walk gate", {c.name: c.value for c in verdict.criteria} | {"decision": verdict.decision})
    assert verdict.decision == "no-go"
    # nothing to learn: the selection edge is not significant (Sharpe alone can pass on market drift)
    assert "symbol_timing_edge_t" in verdict.failing
