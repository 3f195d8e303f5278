"""The go/no-go gate: thresholds from params, fails closed, tiers decide what blocks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from hmarl.config import ConfigError, build_config
from hmarl.evaluation.gate import evaluate_gate, verdict_from_dict, write_gate_json
from hmarl.evaluation.params import GateConfig

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-9


def _cfg(*overrides: str) -> GateConfig:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return build_config(raw, list(overrides)).gate


def _passing(cfg: GateConfig) -> dict[str, float]:
    """A value comfortably on the passing side of every criterion."""
    return {n: c.threshold + (1.0 if c.op in (">", ">=") else -1.0) for n, c in cfg.criteria.items()}


# pass/fail at the edge, written out per comparison (not derived from the implementation's table)
EDGE = {
    ">": {"at": False, "above": True, "below": False},
    ">=": {"at": True, "above": True, "below": False},
    "<": {"at": False, "above": False, "below": True},
    "<=": {"at": True, "above": False, "below": True},
}


def test_seed_thresholds_come_from_params():
    cfg = _cfg()
    c = cfg.criteria
    assert (c["symbol_walk_forward_sharpe"].op, c["symbol_walk_forward_sharpe"].threshold) == (">", 0.6)
    assert (c["master_drawdown_reduction"].op, c["master_drawdown_reduction"].threshold) == (">", 0.15)
    assert (c["sanitizer_trade_delta_mean"].op, c["sanitizer_trade_delta_mean"].threshold) == ("<", 0.15)
    assert (c["strategic_max_drawdown"].tier, c["strategic_max_drawdown"].op) == ("strategic", "<")
    assert cfg.tiers["strategic"] is False and cfg.tiers["value"] is True
    # params.yaml spells out the defaults (the full profile has no gate overlay)
    assert _cfg("profile=full") == GateConfig()
    # the value tier: thresholds from params; smoke only lowers the whole-account return to "above cash"
    v = _cfg("profile=full").criteria
    assert (v["value_excess_sharpe_vs_buy_hold"].op, v["value_excess_sharpe_vs_buy_hold"].threshold) == (
        ">",
        0.1,
    )
    assert (
        v["value_matched_vol_return_vs_buy_hold"].op,
        v["value_matched_vol_return_vs_buy_hold"].threshold,
    ) == (
        ">",
        0.0,
    )
    assert (v["value_excess_annual_return"].tier, v["value_excess_annual_return"].threshold) == (
        "value",
        0.03,
    )
    assert c["value_excess_annual_return"].threshold == 0.005  # smoke overlay
    assert {n: x for n, x in c.items() if n != "value_excess_annual_return"} == {
        n: x for n, x in v.items() if n != "value_excess_annual_return"
    }
    assert _cfg("gate.criteria.strategic_sharpe.threshold=1.2").criteria["strategic_sharpe"].threshold == 1.2


def test_every_criterion_at_its_threshold_edge():
    cfg = _cfg()
    base = _passing(cfg)
    assert evaluate_gate(base, cfg).go
    for name, crit in cfg.criteria.items():
        for where, value in (
            ("at", crit.threshold),
            ("above", crit.threshold + EPS),
            ("below", crit.threshold - EPS),
        ):
            verdict = evaluate_gate({**base, name: value}, cfg)
            result = next(c for c in verdict.criteria if c.name == name)
            assert result.passed is EDGE[crit.op][where], (name, crit.op, where)
            assert result.value == value and result.threshold == crit.threshold
            # only this criterion changed: the verdict follows it when its tier blocks
            assert verdict.go is (result.passed or not cfg.tiers[crit.tier])


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf"), "n/a", True])
def test_missing_or_non_finite_values_fail_closed(bad):
    cfg = _cfg()
    base = _passing(cfg)
    # a '<' criterion (-inf would satisfy it numerically) and a '>' one (+inf would)
    for name in ("sanitizer_trade_delta_mean", "symbol_walk_forward_sharpe"):
        values = {**base, name: bad}
        if bad is None:
            del values[name]
        verdict = evaluate_gate(values, cfg)
        result = next(c for c in verdict.criteria if c.name == name)
        assert not result.passed and result.value is None and result.problem
        assert not verdict.go and verdict.failing == [name]


def test_non_blocking_tier_reports_without_blocking_and_can_be_made_blocking():
    values = {**_passing(_cfg()), "strategic_sharpe": 0.5, "strategic_max_drawdown": float("nan")}
    reported = evaluate_gate(values, _cfg())
    assert reported.go and reported.decision == "go"
    assert reported.failing == [] and reported.failing_nonblocking == [
        "strategic_sharpe",
        "strategic_max_drawdown",
    ]
    blocking = evaluate_gate(values, _cfg("gate.tiers.strategic=true"))
    assert not blocking.go and blocking.failing == ["strategic_sharpe", "strategic_max_drawdown"]
    assert "strategic" in blocking.blocking_tiers and "strategic" not in reported.blocking_tiers
    # and a learning failure is blocking by default
    assert not evaluate_gate({**values, "symbol_walk_forward_sharpe": 0.2}, _cfg()).go


def test_gate_json_is_one_complete_document(tmp_path):
    cfg = _cfg()
    values = {**_passing(cfg), "master_drawdown_reduction": 0.05, "strategic_sharpe": float("nan")}
    verdict = evaluate_gate(values, cfg)
    path = tmp_path / "reports" / "gate.json"
    write_gate_json(path, verdict)
    assert [p.name for p in path.parent.iterdir()] == ["gate.json"]  # no temp file left behind
    data = json.loads(path.read_text())  # strict JSON: NaN was written as null
    assert data["decision"] == "no-go" and data["go"] is False
    assert data["failing"] == ["master_drawdown_reduction"]
    assert set(data["blocking_tiers"]) == {"learning", "master", "stage5", "stability", "value"}
    assert set(data["criteria"]) == set(cfg.criteria)
    row = data["criteria"]["master_drawdown_reduction"]
    assert (row["value"], row["threshold"], row["op"], row["passed"]) == (0.05, 0.15, ">", False)
    assert data["criteria"]["strategic_sharpe"]["value"] is None
    assert data["criteria"]["strategic_sharpe"]["problem"] == "nan"
    back = verdict_from_dict(data)  # keys are sorted in the file: compare by name
    assert {c.name: c for c in back.criteria} == {c.name: c for c in verdict.criteria}
    assert back.decision == verdict.decision and back.failing == verdict.failing
    assert not math.isnan(data["criteria"]["symbol_walk_forward_sharpe"]["value"])


def test_bad_gate_params_name_the_key():
    with pytest.raises(ConfigError, match="gate.criteria.strategic_sharpe.op"):
        _cfg("gate.criteria.strategic_sharpe.op='=='")
    with pytest.raises(ConfigError, match="unknown tier"):
        _cfg("gate.criteria.strategic_sharpe.tier=bogus")
    with pytest.raises(ConfigError, match="gate.tiers.bogus|unknown key"):
        _cfg("gate.bogus=1")
