"""Register the model bundle in MLflow with lineage; on the gate's go, champion/challenger, then the alias.

The bundle is what ``hmarl act`` serves; on go, the current champion is evaluated on the same walk-forward
test folds before the ``champion`` alias moves (:class:`hmarl.tracking.registry.ModelRegistry`).

The bundle (one registered model version) is written by :func:`hmarl.serve.assemble.assemble_bundle` (its
layout is described there) and read by :func:`hmarl.serve.bundle.load_bundle`, as ``hmarl act`` reads it.

Champion/challenger: the challenger's metrics are the walk-forward policy metrics over all folds
(:func:`hmarl.evaluation.aggregate.aggregate`, as the gate computes them); the current champion bundle is
evaluated on the same test bars of this run's data with the same code (:mod:`hmarl.serve.evaluate`) and
aggregated the same way. A champion that cannot be evaluated on this data (other symbols, features or
regime inputs, an unreadable bundle) is compared by its recorded metric instead, and the reason says so.
On no-go the version is registered with ``status=rejected`` and no alias moves.

Output ``decision`` (default ``reports/promote``): ``decision.json`` (decision, version, champion, previous
champion, reason, comparison, challenger / champion metrics, lineage).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from hmarl.config import ConfigError, HmarlConfig
from hmarl.errors import DataError, HmarlError
from hmarl.evaluation.aggregate import aggregate, json_safe, mlflow_trial_sharpes
from hmarl.evaluation.folders import fold_folders
from hmarl.evaluation.period import POLICY, PeriodEvaluation
from hmarl.io import read_json, write_json
from hmarl.safe_load import read_document
from hmarl.serve.assemble import assemble_bundle

log = logging.getLogger(__name__)

INPUTS = {
    "gate": "reports/gate",
    "walk_forward": "reports/walk_forward",
    "store": "data/features",
    "sl_cache": "data/sl_cache",
    "encoder": "models/encoder",
    "symbols": "models/symbols",
    "master": "models/master",
}
OUTPUTS = {"decision": "reports/promote"}
PARAMS = ("promote", "gate", "walk_forward", "tracking")
UNCACHED = ("decision",)  # the registry changed: DVC must not restore an old decision


# --------------------------------------------------------------------------- lineage
def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def lineage(cfg: HmarlConfig, inputs: dict[str, Path], manifest: dict) -> dict[str, str]:
    """step -> MLflow run id of the run that produced the input (found by its ``run_key`` tag); steps whose
    runs carry no such key are identified by the digest of their manifest (or verdict) instead."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    out = {
        "sl_cache": _digest(Path(inputs["sl_cache"]) / "manifest.json"),
        "pretrain_encoder": _digest(Path(inputs["encoder"]) / "manifest.json"),
        "gate": _digest(Path(inputs["gate"]) / "gate.json"),
    }
    for step, key in manifest["run_keys"].items():
        runs = []
        if key and exp is not None:
            runs = client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.run_key = '{key}' and tags.step = '{step}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        out[step] = runs[0].info.run_id if runs else f"run_key:{key}"
    return out


# --------------------------------------------------------------------------- champion / challenger
def walk_forward_periods(cfg: HmarlConfig, folder: Path, notes: list[str]) -> list[PeriodEvaluation]:
    """This run's evaluated folds (every fold of splits.n_folds, as the gate requires)."""
    return [PeriodEvaluation.load(p) for p in fold_folders(cfg, folder, notes).values()]


def champion_metrics(
    cfg: HmarlConfig, champion_uri: str, store_dir: Path, periods: list[PeriodEvaluation], trials
) -> tuple[dict | None, str, list[PeriodEvaluation]]:
    """(metrics, how, compared periods): the champion evaluated with the same code on the test periods
    that are out of sample for it too. On the same data, periods before its own test window lie in its
    training range (its SL models and encoder would see their own training bars): they are left out,
    and the challenger is judged on the same remaining periods. (None, why, periods) when it cannot be
    evaluated here (the registry then compares by its recorded metric)."""
    from hmarl.data.splits import folds_for
    from hmarl.data.store import FeatureStore
    from hmarl.serve.bundle import load_bundle
    from hmarl.serve.evaluate import evaluate_bundle
    from hmarl.tracking.registry import ModelRegistry

    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = ModelRegistry(cfg.tracking).download(champion_uri, tmp)
            champion = load_bundle(folder)
            fingerprint = read_json(folder / "features" / "meta.json").get("fingerprint")
        store = FeatureStore.load(store_dir)
        same_data = fingerprint == store.meta.get("fingerprint")
        own_test = folds_for(champion.cfg, store.num_bars)[champion.fold].test[0] if same_data else 0
        compared = [p for p in periods if p.bars[0] >= own_test]
        if not compared:
            return (
                None,
                "every test period lies in its training range on this data: compared by its recorded metric",
                periods,
            )
        evaluated = evaluate_bundle(
            champion,
            store,
            [(p.label, p.bars) for p in compared],
            cfg,
            where=f"{store_dir} (this run's data)",
        )
    except (HmarlError, ConfigError) as exc:
        return None, f"not evaluable on this run's data ({exc}): compared by its recorded metric", periods
    how = f"both evaluated on {', '.join(p.label for p in compared)} with the same code"
    left_out = [p.label for p in periods if p not in compared]
    if left_out:
        how += f" ({', '.join(left_out)} left out: in the champion's training range on this data)"
    return aggregate(evaluated, cfg, trials).metrics[POLICY], how, compared


# --------------------------------------------------------------------------- the step
def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    if not cfg.tracking.enabled:
        raise ConfigError(
            "tracking.enabled: false, but promotion registers the model in the MLflow model registry "
            f"({cfg.tracking.mlflow_uri}); set tracking.enabled=true"
        )
    from hmarl.tracking.registry import CHAMPION, ModelRegistry

    gate_path = Path(inputs["gate"]) / "gate.json"
    if not gate_path.is_file():
        raise DataError(f"{gate_path}: gate verdict not found; run the gate step")
    verdict = read_document(gate_path)
    go = bool(verdict.get("go")) and verdict.get("decision") == "go"
    notes: list[str] = []
    periods = walk_forward_periods(cfg, Path(inputs["walk_forward"]), notes)
    name, promotion = cfg.promote.model_name, cfg.gate.promotion
    registry = ModelRegistry(cfg.tracking)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        manifest = assemble_bundle(cfg, inputs, folder, verdict)
        runs = lineage(cfg, inputs, manifest)
        version = registry.register(
            name, folder, lineage=runs, tags={"gate.decision": verdict.get("decision")}
        )
    trials = mlflow_trial_sharpes(cfg, notes)
    challenger = aggregate(periods, cfg, trials).metrics[POLICY]
    champion, how, current = None, "no champion yet", registry.champion(name)
    challenger_compared = challenger
    if not go:
        how = "gate no-go: no comparison"
    elif current is not None and str(current.version) != version:
        uri = f"models:/{name}@{CHAMPION}"
        champion, how, compared = champion_metrics(cfg, uri, Path(inputs["store"]), periods, trials)
        how = f"v{current.version}: {how}"
        if champion is not None and len(compared) < len(periods):  # judge both on the same bars
            challenger_compared = aggregate(compared, cfg, trials).metrics[POLICY]
    decision = registry.promote(
        name,
        version,
        verdict,
        challenger_compared,
        champion,
        metric=promotion.metric,
        margin=promotion.margin,
        higher_is_better=promotion.higher_is_better,
    )
    status = "promoted" if decision.promoted else ("not-promoted" if go else "rejected")
    doc = {
        "decision": status,
        "model_name": name,
        "version": version,
        "uri": f"models:/{name}/{version}",
        "champion": decision.champion,
        "previous_champion": decision.previous_champion,
        "replaced_champion": str(current.version) if current is not None and decision.promoted else None,
        "reason": decision.reason,
        "comparison": how,
        "metric": promotion.metric,
        "margin": promotion.margin,
        "higher_is_better": promotion.higher_is_better,
        "gate": {"decision": verdict.get("decision"), "failing": verdict.get("failing", [])},
        "metrics": {
            "challenger": challenger,
            "challenger_compared": challenger_compared,
            "champion": champion,
        },
        "periods": [p.label for p in periods],
        "lineage": runs,
        "bundle": manifest,
        "notes": notes,
    }
    out = Path(outputs["decision"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decision.json", json_safe(doc))
    log.info("promote: %s v%s (%s)", status, version, decision.reason)
    return _metrics(decision.promoted, go, version, promotion.metric, challenger, champion)


def _metrics(promoted: bool, go: bool, version: str, metric: str, challenger: dict, champion: dict | None):
    result = {"promoted": float(promoted), "go": float(go), "version": float(version)}
    for side, m in (("challenger", challenger), ("champion", champion or {})):
        value = m.get(metric)
        if value is not None:
            result[f"{side}_{metric}"] = float(value)
    return result
