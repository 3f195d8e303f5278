"""The go/no-go gate as data: criteria from ``cfg.gate`` applied to a dict of measured values.

Fails closed: a criterion whose value is missing, not a number, NaN or infinite fails, whatever its
comparison. The verdict is "go" only when every criterion of every blocking tier passes; failures in
non-blocking tiers (strategic targets by default) are reported but do not flip it.

    verdict = evaluate_gate({"symbol_walk_forward_sharpe": 0.71, ...}, cfg.gate)
    write_gate_json("reports/gate.json", verdict)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from hmarl.evaluation.metrics import drawdown_reduction
from hmarl.evaluation.params import DESCRIPTIONS, GateConfig
from hmarl.evaluation.period import POLICY
from hmarl.evaluation.stage5_checklist import STAGE5_VALUE_NAMES, worst_seed_values
from hmarl.evaluation.value import value_values
from hmarl.io import write_json

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class CriterionResult:
    name: str
    tier: str
    op: str
    threshold: float
    value: float | None  # None: missing or not finite (see ``problem``)
    passed: bool
    blocking: bool
    problem: str = ""  # why a value could not be judged: "missing", "nan", "inf", "not a number"
    description: str = ""


@dataclass(frozen=True)
class Verdict:
    criteria: tuple[CriterionResult, ...]
    blocking_tiers: tuple[str, ...]

    @property
    def go(self) -> bool:
        return all(c.passed for c in self.criteria if c.blocking)

    @property
    def decision(self) -> str:
        return "go" if self.go else "no-go"

    @property
    def failing(self) -> list[str]:
        """Blocking criteria that failed (the reasons for a no-go)."""
        return [c.name for c in self.criteria if c.blocking and not c.passed]

    @property
    def failing_nonblocking(self) -> list[str]:
        return [c.name for c in self.criteria if not c.blocking and not c.passed]

    def to_dict(self) -> dict:
        return {
            "decision": self.decision,
            "go": self.go,
            "blocking_tiers": list(self.blocking_tiers),
            "failing": self.failing,
            "failing_nonblocking": self.failing_nonblocking,
            "criteria": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.criteria},
        }


def _judge(value) -> tuple[float | None, str]:
    if value is None:
        return None, "missing"
    if isinstance(value, bool):  # a bool is an int in Python, but not a measurement
        return None, "not a number"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None, "not a number"
    if math.isnan(x):
        return None, "nan"
    if math.isinf(x):
        return None, "inf"
    return x, ""


def evaluate_gate(values: Mapping[str, object], cfg: GateConfig) -> Verdict:
    """Judge every criterion of ``cfg`` on ``values`` (metric name -> number); keys without a
    criterion are ignored."""
    results = []
    for name, crit in cfg.criteria.items():
        x, problem = _judge(values.get(name))
        passed = x is not None and _OPS[crit.op](x, crit.threshold)
        results.append(
            CriterionResult(
                name,
                crit.tier,
                crit.op,
                crit.threshold,
                x,
                bool(passed),
                cfg.tiers[crit.tier],
                problem,
                DESCRIPTIONS.get(name, ""),
            )
        )
    blocking = tuple(t for t, b in cfg.tiers.items() if b)
    return Verdict(tuple(results), blocking)


def verdict_from_dict(data: Mapping) -> Verdict:
    """Rebuild a verdict from its JSON form (``gate.json`` read back by the promote step)."""
    crits = tuple(CriterionResult(name=n, **c) for n, c in data["criteria"].items())
    return Verdict(crits, tuple(data["blocking_tiers"]))


def write_gate_json(path: str | Path, verdict: Verdict) -> None:
    """One JSON document, written atomically."""
    write_json(path, verdict.to_dict())


def gate_values(agg, per_seed: dict[str, dict[str, float]], cfg) -> dict[str, float]:
    """The values the gate criteria read from an :class:`~hmarl.evaluation.aggregate.Aggregate` and the Stage 5
    seeds' values (hmarl/steps/gate.py's docstring says what each is); absent ones stay absent (fail)."""

    def metric(name: str, key: str) -> float:
        return float(agg.metrics.get(name, {}).get(key, math.nan))

    stage5_criteria = {n: c for n, c in cfg.gate.criteria.items() if n in STAGE5_VALUE_NAMES}
    return {
        **worst_seed_values(per_seed, stage5_criteria),
        "symbol_walk_forward_sharpe": metric("symbol_agents", "sharpe"),
        "symbol_timing_edge_t": float(agg.timing_edge.get("symbol_agents", {}).get("t", math.nan)),
        "master_drawdown_reduction": drawdown_reduction(
            metric(POLICY, "max_drawdown"), metric("no_master", "max_drawdown")
        ),
        **value_values(agg),
        "strategic_annual_return": metric(POLICY, "annual_return"),
        "strategic_sharpe": metric(POLICY, "sharpe"),
        "strategic_max_drawdown": metric(POLICY, "max_drawdown"),
    }
