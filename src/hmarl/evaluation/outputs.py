"""Files of an aggregated evaluation: ``metrics.json``, ``evaluation.json``, ``report.html``, ``report.md``.

agg = aggregate([PeriodEvaluation.load(p) for p in folders], cfg)
write_evaluation("reports/gate", agg, title="Walk-forward evaluation", gate=verdict.to_dict())
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hmarl.env.actions import ACTION_NAMES
from hmarl.evaluation.period import POLICY
from hmarl.evaluation.report import EvaluationResult, render_markdown, write_report
from hmarl.evaluation.value import value_rows
from hmarl.io import write_json, write_text

if TYPE_CHECKING:
    from hmarl.evaluation.aggregate import Aggregate


def json_safe(obj):
    """Nested dicts/lists with NaN/inf floats as None (JSON has no NaN) and numpy scalars as floats."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def metrics_document(agg: Aggregate) -> dict[str, dict[str, float]]:
    """``metrics.json``: name -> every metric at the base cost (the policy's with deflated_sharpe, pbo)."""
    return {n: dict(m) for n, m in agg.metrics.items()}


def evaluation_result(
    agg: Aggregate,
    title: str,
    *,
    gate: dict | None = None,
    seeds: list[dict] | None = None,
    entropy: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    reward_contributions: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
) -> EvaluationResult:
    return EvaluationResult(
        title=title,
        bars_per_year=agg.bars_per_year,
        equity=agg.equity,
        policy=POLICY,
        dates=agg.dates,
        metrics=agg.metrics,
        action_mix={a: agg.actions[:, i] for i, a in enumerate(ACTION_NAMES[: agg.actions.shape[1]])},
        entropy=dict(entropy or {}),
        reward_contributions=dict(reward_contributions or {}),
        symbol_sharpes=agg.symbol_sharpes,
        folds=agg.fold_rows(),
        cost_stress=agg.cost_stress_rows(),
        stress_windows=agg.stress_windows,
        seeds=list(seeds or []),
        overfitting=dict(agg.overfitting),
        gate=gate,
        notes=[*agg.notes, *notes],
        value=value_rows(agg),
        risk_free=agg.risk_free_label,
        benchmark="present" if agg.has_benchmark else "absent (the data has no benchmark)",
        exposure=agg.exposure,
    )


def write_evaluation(
    out_dir: str | Path,
    agg: Aggregate,
    title: str = "Evaluation",
    *,
    gate: dict | None = None,
    seeds: list[dict] | None = None,
    entropy: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    reward_contributions: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Write ``metrics.json``, ``evaluation.json`` (tables), ``report.html`` and ``report.md`` into
    ``out_dir``; the gate-only parts (verdict, seeds, entropy, reward contributions) are optional.
    Returns the metrics document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(agg)
    write_json(out / "metrics.json", json_safe(doc))
    result = evaluation_result(
        agg,
        title,
        gate=gate,
        seeds=seeds,
        entropy=entropy,
        reward_contributions=reward_contributions,
        notes=notes,
    )
    write_json(
        out / "evaluation.json",
        json_safe(
            {
                "periods": agg.labels,
                "first": agg.dates[0],
                "last": agg.dates[-1],
                "bars_per_year": agg.bars_per_year,
                "cost_bps": agg.cost_bps,
                "risk_free": agg.risk_free_label,
                "benchmark": result.benchmark,
                "value": result.value,
                "per_period": agg.per_period,
                "cost_stress": agg.cost_stress_rows(),
                "stress_windows": agg.stress_windows,
                "exposure": agg.exposure,
                "symbol_sharpes": agg.symbol_sharpes,
                "overfitting": agg.overfitting,
                "notes": result.notes,
            }
        ),
    )
    write_report(out / "report.html", result)
    write_text(out / "report.md", render_markdown(result))
    return doc
