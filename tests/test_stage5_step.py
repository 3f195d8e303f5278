"""The stage5 step end to end on a tiny market built by the real upstream steps: the output folder,
values.json = the checklist + telemetry summary of the run's own telemetry, determinism per seed,
independence across seeds, and bad input leaving nothing behind."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from hmarl.errors import DataError, StepError
from hmarl.evaluation.stage5_checklist import MANDATORY, STAGE5_VALUE_NAMES, seed_values
from hmarl.io import read_json
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, build_upstream, market_config  # noqa: E402

# 8 updates of 16 env steps; check step / warm-up scaled down so every checklist value is measurable;
# the training directive of params.yaml (the schema default is none)
STAGE5 = [
    "stage5.total_steps=128",
    "gate.stage5.check_step=96",
    "gate.stage5.warmup_steps=48",
    "ppo.directive=[2,1,2]",
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, str]:
    return build_upstream(tmp_path_factory.mktemp("upstream"), market_config(TINY))


def stage5(upstream: dict, tmp_path: Path, seed: int, *extra: str, **inputs: str):
    cfg = market_config(
        [*TINY, *AGENT, *STAGE5, f"seed={seed}", f"ppo.checkpoint_dir={tmp_path / 'ck'}", *extra]
    )
    folder = tmp_path / f"seed_{seed}"
    metrics = execute("stage5", cfg, {**upstream, **inputs}, {"run": str(folder)})
    return metrics, folder, cfg


def same(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or a == b


def test_step_trains_the_seed_and_writes_its_checklist_values(upstream, tmp_path):
    metrics, out, cfg = stage5(upstream, tmp_path, 1337)
    assert sorted(p.name for p in out.iterdir()) == [
        "checklist.json",
        "manifest.json",
        "model",
        "summary.json",
        "telemetry.json",
        "values.json",
    ]
    # the stage5 budget, not ppo.total_steps, sets the run length; the seed is the one given
    model_manifest = read_json(out / "model" / "manifest.json")
    assert model_manifest["env_steps"] == 128 and model_manifest["config"]["seed"] == 1337
    assert model_manifest["config"]["ppo"]["total_steps"] == 128
    manifest = read_json(out / "manifest.json")
    assert manifest["seed"] == 1337 and manifest["total_steps"] == 128
    assert manifest["run_key"] == model_manifest["run_key"]
    # symbol agents train under the training directive (ppo.directive), and so does stage5
    assert model_manifest["config"]["env"]["master"]["default"] == [2, 1, 2] == cfg.ppo.directive

    values = read_json(out / "values.json")
    summary_keys = {*MANDATORY, *(f"{k}_final" for k in MANDATORY)}
    assert set(values) == set(STAGE5_VALUE_NAMES) | summary_keys
    # recomputed from the copied telemetry: values.json is the checklist of this run's series
    series = read_json(out / "telemetry.json")["series"]
    assert series == read_json(out / "model" / "telemetry.json")["series"]
    assert len(series) == 8
    weights = cfg.reward.weight_sets[cfg.reward.weights]
    expected = seed_values(series, cfg.gate.stage5, weights)
    for k, v in expected.items():
        assert same(values[k], v if math.isfinite(v) else None), k
    # the trainer records every key the checklist reads: each checklist value is measurable
    for name in STAGE5_VALUE_NAMES:
        assert values[name] is not None, name
    assert values["warmup_masking_events"] >= 0 and values["training_nonfinite_updates"] == 0
    assert 0 < values["max_executed_action_share"] <= 1

    assert metrics["seed"] == 1337 and metrics["env_steps"] == 128
    assert {k: metrics[k] for k in values} == pytest.approx(expected)
    checklist = read_json(out / "checklist.json")
    assert set(checklist["criteria"]) == set(STAGE5_VALUE_NAMES) & set(cfg.gate.criteria)
    assert metrics["checklist_passed"] == float(checklist["go"])
    for name, c in checklist["criteria"].items():
        assert (
            c["value"] == pytest.approx(values[name]) and c["threshold"] == cfg.gate.criteria[name].threshold
        )


def test_same_seed_reproduces_the_values_and_each_seed_is_its_own_mlflow_run(upstream, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracking = [
        "tracking.enabled=true",
        f"tracking.mlflow_uri={uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        f"tracking.tensorboard_dir={tmp_path / 'tb'}",
    ]
    _, a, _ = stage5(upstream, tmp_path / "a", 42, *tracking)
    _, b, _ = stage5(upstream, tmp_path / "b", 42)  # tracking off: the values do not depend on it
    _, c, _ = stage5(upstream, tmp_path / "c", 9001, *tracking)
    va, vb, vc = (read_json(p / "values.json") for p in (a, b, c))
    assert va == vb
    assert va != vc
    assert read_json(a / "manifest.json")["run_key"] != read_json(c / "manifest.json")["run_key"]

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("hmarl").experiment_id])
    by_seed = {r.data.tags["stage5_seed"]: r for r in runs}
    assert sorted(by_seed) == ["42", "9001"] and len(runs) == 2
    for seed, run in by_seed.items():
        assert run.data.params["seed"] == seed and run.data.tags["stage"] == "stage5"
        assert run.info.status == "FINISHED"


def test_missing_or_empty_encoder_fails_naming_it_and_leaves_no_output(upstream, tmp_path):
    with pytest.raises(StepError, match="'encoder' not found"):
        stage5(upstream, tmp_path, 42, encoder=str(tmp_path / "nope"))
    assert not (tmp_path / "seed_42").exists()

    empty = tmp_path / "empty_encoder"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_encoder: not an encoder folder"):
        stage5(upstream, tmp_path, 42, encoder=str(empty))
    assert list(tmp_path.glob("seed_42*")) == []
