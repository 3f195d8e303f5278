"""The go/no-go gate: Stage 5 seeds + every walk-forward fold -> one verdict, report and DVC plots.

Inputs are the parent folders of the per-seed / per-fold step outputs::

    reports/stage5/seed_<s>/values.json        Stage 5 checklist + telemetry summary of seed s (NaN = null)
    reports/stage5/seed_<s>/telemetry.json     its telemetry series (optional: entropy / reward charts)
    reports/walk_forward/fold_<k>/             one PeriodEvaluation (period.json, series.npz)

Coverage is checked first: every seed of ``stage5.seeds`` and every fold of ``splits.n_folds`` (which
``walk_forward.folds`` must list) must be there, or the step fails naming what is missing and writes
nothing. Folders of other seeds/folds (left by an older config) are ignored, with a note in the report.

Gate values: ``symbol_walk_forward_sharpe`` = Sharpe of the ``symbol_agents`` baseline over the concatenated
folds at the base cost; ``master_drawdown_reduction`` = 1 - maxDD(policy) / maxDD(no_master); the Stage 5
and stability values are the worst seed's; ``value_*`` = the policy against equal-weight buy-and-hold
(:mod:`hmarl.evaluation.value`); ``strategic_*`` = the policy's annual return / Sharpe / max drawdown.
Every Sharpe is in excess of the risk-free (cash) rate of the folds. A verdict of no-go is a result, not an error: the step succeeds and ``promote`` reads it.

Outputs: ``reports/gate/{gate.json, values.json, metrics.json, evaluation.json, seeds.json, report.html,
report.md}`` and ``plots/gate/*.csv``. Use :func:`assess` to get the verdict without writing anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmarl.config import HmarlConfig
from hmarl.errors import DataError
from hmarl.evaluation.aggregate import Aggregate, aggregate, json_safe, mlflow_trial_sharpes, write_evaluation
from hmarl.evaluation.folders import fold_folders, seed_folders
from hmarl.evaluation.gate import Verdict, evaluate_gate, gate_values, write_gate_json
from hmarl.evaluation.period import POLICY, PeriodEvaluation
from hmarl.evaluation.plot_data import write_plot_csvs
from hmarl.evaluation.stage5_checklist import (
    SeedDiff,
    cross_seed_diff,
    entropy_curves,
    reward_contributions,
)
from hmarl.io import read_json, write_json
from hmarl.tracking import Tracker

log = logging.getLogger(__name__)

INPUTS = {"stage5": "reports/stage5", "walk_forward": "reports/walk_forward"}
OUTPUTS = {"report": "reports/gate", "plots": "plots/gate"}
PARAMS = ("gate", "stage5", "walk_forward", "splits", "reward", "tracking")
UNCACHED = ("plots",)  # small CSVs kept in the workspace for `dvc plots`
_NAN = float("nan")


@dataclass
class Assessment:
    """Everything the gate judged, before anything is written."""

    per_seed: dict[str, dict[str, float]]  # seed -> values.json
    telemetry: dict[str, list[dict]]  # seed -> telemetry series (seeds without telemetry.json left out)
    agg: Aggregate
    seed_diff: SeedDiff
    values: dict[str, float]  # gate criterion name -> value
    verdict: Verdict
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading
def read_seed_values(path: Path) -> dict[str, float]:
    """One seed's ``values.json`` (null -> NaN)."""
    if not path.exists():
        raise DataError(f"{path}: missing (the stage5 step writes it)")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object of metric -> number")
    out = {}
    for key, value in raw.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise DataError(f"{path}: {key} is {value!r}, not a number or null")
        out[key] = _NAN if value is None else float(value)
    return out


def read_telemetry(path: Path) -> list[dict] | None:
    """The telemetry series of ``telemetry.json`` (a list, or train_symbols' ``{"series": [...]}``)."""
    if not path.exists():
        return None
    raw = read_json(path)
    series = raw.get("series") if isinstance(raw, dict) else raw
    if not isinstance(series, list):
        raise DataError(f"{path}: expected a list of per-update records (or an object with 'series')")
    return [{k: _NAN if v is None else v for k, v in r.items()} for r in series]


# --------------------------------------------------------------------------- judging
def assess(cfg: HmarlConfig, stage5_dir: str | Path, walk_forward_dir: str | Path) -> Assessment:
    """Read the Stage 5 seeds and walk-forward folds, aggregate, and judge (nothing is written).
    Deflated-Sharpe trials come from MLflow when tracking is on (see hmarl.evaluation.aggregate)."""
    notes: list[str] = []
    seeds = seed_folders(cfg, stage5_dir, notes)
    folds = fold_folders(cfg, walk_forward_dir, notes)
    per_seed = {str(s): read_seed_values(p / "values.json") for s, p in seeds.items()}
    telemetry = {}
    for s, p in seeds.items():
        series = read_telemetry(p / "telemetry.json")
        if series is None:
            notes.append(f"seed {s}: no telemetry.json (entropy and reward charts leave it out)")
        else:
            telemetry[str(s)] = series
    periods = [PeriodEvaluation.load(p) for p in folds.values()]
    agg = aggregate(periods, cfg, mlflow_trial_sharpes(cfg, notes))
    values = gate_values(agg, per_seed, cfg)
    return Assessment(
        per_seed, telemetry, agg, cross_seed_diff(per_seed), values, evaluate_gate(values, cfg.gate), notes
    )


def flat_metrics(a: Assessment) -> dict[str, float]:
    """The step's metrics (DVC metrics, MLflow): go, every gate value, the policy's metrics; finite only."""
    out = {
        "go": float(a.verdict.go),
        "failing_criteria": float(len(a.verdict.failing)),
        "n_seeds": float(len(a.per_seed)),
        "n_folds": float(len(a.agg.labels)),
        **a.values,
        **{f"policy_{k}": v for k, v in a.agg.metrics[POLICY].items()},
    }
    return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}


def _mean_contributions(a: Assessment, cfg: HmarlConfig) -> dict[str, float]:
    weights = cfg.reward.weight_sets[cfg.reward.weights]
    per_seed = [reward_contributions(s, weights) for s in a.telemetry.values()]
    names = list(dict.fromkeys(k for c in per_seed for k in c))
    return {n: float(np.mean([c[n] for c in per_seed if n in c])) for n in names}


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    a = assess(cfg, inputs["stage5"], inputs["walk_forward"])
    report, plots = Path(outputs["report"]), Path(outputs["plots"])
    report.mkdir(parents=True, exist_ok=True)
    curves = {s: entropy_curves(series) for s, series in a.telemetry.items()}
    entropy = {f"seed {s} {kind}": c for s, by in curves.items() for kind, c in by.items()}
    contributions = _mean_contributions(a, cfg)
    write_gate_json(report / "gate.json", a.verdict)
    write_json(report / "values.json", json_safe(a.values))
    write_json(report / "seeds.json", json_safe(a.seed_diff.to_dict()))
    write_evaluation(
        report,
        a.agg,
        f"Gate: {a.verdict.decision.upper()} ({', '.join(a.agg.labels)}; seeds {', '.join(a.per_seed)})",
        gate=a.verdict.to_dict(),
        seeds=a.seed_diff.rows(),
        entropy=entropy,
        reward_contributions=contributions,
        notes=a.notes,
    )
    write_plot_csvs(
        plots, a.agg, {s: by["policy"] for s, by in curves.items() if "policy" in by}, contributions
    )
    metrics = flat_metrics(a)
    with Tracker(cfg.tracking).start_run("gate", tags={"profile": cfg.profile}) as tracker:
        tracker.set_tags({"decision": a.verdict.decision, "failing": ",".join(a.verdict.failing)})
        tracker.log_metrics(metrics)
        tracker.log_artifacts(report, "gate")
    log.info("gate: %s (failing: %s)", a.verdict.decision, ", ".join(a.verdict.failing) or "none")
    return metrics
