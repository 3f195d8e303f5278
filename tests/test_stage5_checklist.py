"""Stage 5 checklist values from a telemetry series built so that every answer is known by construction."""

from __future__ import annotations

import math
import statistics

import pytest

from hmarl.evaluation import stage5_checklist as s5
from hmarl.evaluation.gate import evaluate_gate
from hmarl.evaluation.params import GateConfig, Stage5Config

STEP = 128
CFG = Stage5Config(check_step=6000, warmup_steps=4000)
WEIGHTS = {"pnl": 0.75, "cost": 0.10, "sharpe": 0.03, "timing": 0.0}
ACTIONS = ("HOLD", "BUY_SMALL", "BUY_MEDIUM", "BUY_LARGE", "SELL_PARTIAL", "SELL_ALL", "ADD_TO_WINNER")


def _series(n: int = 80) -> list[dict[str, float]]:
    """Updates every 128 env steps. By construction:
    entropy 0.5 before step 6000, 0.25 at the first update past it (step 6016), then 0.3 except a dip to
    0.10 where the guard intervened (update 60) and a dip to 0.19 where it did not (update 70);
    diversity bonus absent for the first 4 updates, then alternating 0.05 / 0.15 (mean 0.10);
    HOLD executed 70 % in the first 40 updates and 40 % after (mean 55 %), the rest spread evenly;
    masking: 2 blocked BUYs per update up to step 4000 (31 updates) and 1 restored SELL in the first."""
    rows = []
    for i in range(n):
        step = (i + 1) * STEP
        entropy = 0.5 if step < 6000 else 0.3
        if step == 47 * STEP:
            entropy = 0.25
        guard = 0.0
        if i == 60:
            entropy, guard = 0.10, 3.0
        if i == 70:
            entropy = 0.19
        hold = 0.7 if i < 40 else 0.4
        r = {
            "global_step": float(step),
            "policy_action_entropy_mean": entropy,
            "executed_action_entropy_mean": entropy * 0.9,
            "voluntary_trade_rate_mean": 0.12,
            "sanitizer_trade_delta_mean": 0.02 if i % 2 else 0.06,
            "entropy_guard_interventions": guard,
            "component_pnl": 0.01,
            "component_cost": -0.01,
            "component_sharpe": 0.0,
            "component_timing": 5.0,  # weight 0: never counts
            "loss_policy": -0.01,
            "loss_value": 0.5,
            "mask_blocked_buy": 2.0 if step <= 4000 else 0.0,
            "mask_restored_sell": 1.0 if i == 0 else 0.0,
        }
        r.update({f"executed_fraction_{a}": hold if a == "HOLD" else (1 - hold) / 6 for a in ACTIONS})
        if i >= 4:
            r["ep_diversity_bonus_mean"] = 0.05 if i % 2 else 0.15
            r["ep_unique_actions_mean"] = 4.0
        rows.append(r)
    return rows


def test_checklist_values_known_by_construction():
    v = s5.checklist_values(_series(), CFG, WEIGHTS)
    assert set(v) == set(s5.STAGE5_VALUE_NAMES)
    assert v["policy_entropy_at_check"] == 0.25
    assert v["policy_entropy_min_after_check"] == 0.19  # the guarded 0.10 dip is excused
    assert v["diversity_bonus_mean"] == pytest.approx(0.10)
    assert v["voluntary_trade_rate_mean"] == pytest.approx(0.12)
    assert v["sanitizer_trade_delta_mean"] == pytest.approx(0.04)
    assert v["max_executed_action_share"] == pytest.approx(0.55)
    assert v["warmup_masking_events"] == 31 * 2 + 1
    # |0.75 * 0.01| vs |0.10 * -0.01| per update; sharpe contributes 0, timing has no weight
    assert v["reward_max_component_share"] == pytest.approx(0.0075 / (0.0075 + 0.001))
    assert v["training_nonfinite_updates"] == 0


def test_checklist_feeds_the_gate():
    cfg = GateConfig()
    good = s5.checklist_values(_series(), CFG, WEIGHTS)
    verdict = evaluate_gate(good, cfg)
    stage5 = {c.name: c.passed for c in verdict.criteria if c.tier in ("stage5", "stability")}
    assert all(stage5.values()), stage5
    collapsed = _series()
    collapsed[70]["policy_action_entropy_mean"] = 0.10  # a collapse the guard did not answer
    collapsed[75]["loss_value"] = float("nan")  # and a diverged update
    v = s5.checklist_values(collapsed, CFG, WEIGHTS)
    assert v["policy_entropy_min_after_check"] == 0.10 and v["training_nonfinite_updates"] == 1
    failing = evaluate_gate(v, cfg).failing
    assert "policy_entropy_min_after_check" in failing and "training_nonfinite_updates" in failing


def test_unmeasurable_values_are_nan_and_fail():
    short = [r for r in _series() if r["global_step"] < 6000]  # run ends before the check step
    v = s5.checklist_values(short, CFG, WEIGHTS)
    assert math.isnan(v["policy_entropy_at_check"]) and math.isnan(v["policy_entropy_min_after_check"])
    no_masks = [{k: x for k, x in r.items() if not k.startswith("mask_")} for r in _series()]
    assert math.isnan(s5.checklist_values(no_masks, CFG, WEIGHTS)["warmup_masking_events"])
    empty = s5.checklist_values([], CFG, WEIGHTS)
    assert all(math.isnan(x) for x in empty.values())
    failing = evaluate_gate(empty, GateConfig()).failing
    assert set(s5.STAGE5_VALUE_NAMES) <= set(failing)


def test_first_update_counts_for_warmup_even_past_it():
    series = [
        {"global_step": 5000.0, "mask_blocked_buy": 3.0},
        {"global_step": 6000.0, "mask_blocked_buy": 9.0},
    ]
    assert s5.warmup_masking_events(series, 4000) == 3.0


def test_schema_names_match_the_trainer():
    from hmarl.env.actions import ACTION_NAMES
    from hmarl.env.params import REWARD_COMPONENTS

    assert ACTIONS == ACTION_NAMES and set(WEIGHTS) <= set(REWARD_COMPONENTS)


def test_cross_seed_diff_and_worst_seed():
    per_seed = {
        42: {
            "diversity_bonus_mean": 0.10,
            "sanitizer_trade_delta_mean": 0.05,
            "policy_entropy_at_check": 0.3,
        },
        1337: {
            "diversity_bonus_mean": 0.07,
            "sanitizer_trade_delta_mean": 0.12,
            "policy_entropy_at_check": 0.4,
        },
        9001: {"diversity_bonus_mean": 0.13, "sanitizer_trade_delta_mean": 0.08},
    }
    diff = s5.cross_seed_diff(per_seed)
    assert diff.seeds == ("42", "1337", "9001")
    assert diff.mean["diversity_bonus_mean"] == pytest.approx(statistics.mean([0.10, 0.07, 0.13]))
    assert diff.std["diversity_bonus_mean"] == pytest.approx(statistics.stdev([0.10, 0.07, 0.13]))
    assert diff.count["policy_entropy_at_check"] == 2
    assert diff.mean["policy_entropy_at_check"] == pytest.approx(0.35)
    rows = {r["metric"]: r for r in diff.rows()}
    assert rows["sanitizer_trade_delta_mean"]["seed 1337"] == 0.12
    assert math.isnan(rows["policy_entropy_at_check"]["seed 9001"])
    worst = s5.worst_seed_values(per_seed, GateConfig().criteria)
    assert worst["diversity_bonus_mean"] == 0.07  # '>=': the lowest seed
    assert worst["sanitizer_trade_delta_mean"] == 0.12  # '<': the highest seed
    assert math.isnan(worst["policy_entropy_at_check"])  # one seed lacks it: fails closed
    assert "symbol_walk_forward_sharpe" not in worst  # not a per-seed value


def test_telemetry_summary_mean_and_final():
    summary = s5.telemetry_summary(_series())
    assert summary["voluntary_trade_rate_mean"] == pytest.approx(0.12)
    assert summary["ep_diversity_bonus_mean_final"] == 0.05  # the last update (index 79, odd)
    assert summary["policy_action_entropy_mean_final"] == 0.3


def test_report_inputs_from_the_series():
    series = _series()
    contrib = s5.reward_contributions(series, WEIGHTS)
    assert contrib == pytest.approx({"pnl": 0.0075, "cost": -0.001, "sharpe": 0.0})
    curves = s5.entropy_curves(series)
    assert curves["policy"][0][:2] == [128.0, 256.0] and curves["policy"][1][46] == 0.25
    assert len(curves["executed"][1]) == len(series)
    seeds = {seed: s5.seed_values(series, CFG, WEIGHTS) for seed in (42, 1337)}
    diff = s5.cross_seed_diff(seeds)
    assert diff.std["policy_entropy_at_check"] == 0.0 and diff.mean["warmup_masking_events"] == 63.0
    assert "voluntary_trade_rate_mean_final" in diff.mean
