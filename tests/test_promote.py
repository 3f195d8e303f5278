"""The promote step on a real SQLite MLflow registry: the act bundle registered with lineage; on go the
champion alias moves after champion/challenger on the same test folds; a challenger trailing the champion
beyond the margin is not promoted; no-go is registered as rejected; a champion that cannot be evaluated on
this data is compared by its recorded metric; ``hmarl act --model models:/hmarl@champion`` serves it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from hmarl.cli import main
from hmarl.config import ConfigError
from hmarl.data.store import FeatureStore
from hmarl.serve.act import act
from hmarl.serve.bundle import load_bundle
from hmarl.steps.runner import execute
from hmarl.tracking import Tracker
from hmarl.tracking.registry import CHAMPION, ModelRegistry

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixtures import gate_folder, model_config, model_inputs, trained_pipeline, walk_forward  # noqa: E402

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
NAME = "hmarl"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return trained_pipeline(tmp_path_factory)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("mlflow")
    return [
        "tracking.enabled=true",
        f"tracking.mlflow_uri=sqlite:///{d}/mlruns.db",
        f"tracking.artifact_root={d}/artifacts",
        "tracking.experiment=promote-test",
        f"tracking.tensorboard_dir={d}/tb",
    ]


def promote(root: Path, cfg, gate: Path, wf: Path, out: Path) -> tuple[dict, dict]:
    inputs = {**model_inputs(root), "gate": str(gate), "walk_forward": str(wf)}
    metrics = execute("promote", cfg, inputs, {"decision": str(out)})
    return metrics, json.loads((out / "decision.json").read_text())


def test_promotion_needs_tracking(root, tmp_path):
    cfg = model_config(root)  # tracking.enabled=false
    with pytest.raises(ConfigError, match="tracking.enabled"):
        promote(root, cfg, gate_folder(tmp_path, cfg, go=True), root / "walk_forward", tmp_path / "promote")
    assert not (tmp_path / "promote").exists()


def test_promotion_lifecycle(root, tracking, tmp_path, capsys):
    cfg = model_config(root, *tracking)
    registry = ModelRegistry(cfg.tracking)
    go, no_go = gate_folder(tmp_path / "go", cfg, True), gate_folder(tmp_path / "nogo", cfg, False)
    symbols_manifest = json.loads((root / "symbols" / "manifest.json").read_text())
    with Tracker(cfg.tracking).start_run(
        "train_symbols", tags={"step": "train_symbols", "run_key": symbols_manifest["run_key"]}
    ) as run:
        symbols_run = run.run_id

    # 1. go, no champion yet: registered with lineage, promoted, served by hmarl act
    metrics, first = promote(root, cfg, go, root / "walk_forward", tmp_path / "p1")
    assert first["decision"] == "promoted" and first["champion"] == first["version"] == "1"
    assert metrics["promoted"] == 1.0 and first["previous_champion"] is None
    mv = registry.client.get_model_version(NAME, "1")
    assert mv.tags["lineage.train_symbols"] == symbols_run
    assert mv.tags["lineage.train_master"].startswith("run_key:")  # no MLflow run: its run key
    assert mv.tags["manifest.fingerprint"] == FeatureStore.load(root / "features").meta["fingerprint"]
    assert mv.tags["status"] == CHAMPION and mv.tags["gate.decision"] == "go"
    assert str(registry.champion(NAME).version) == "1"
    served = registry.download(f"models:/{NAME}@{CHAMPION}", tmp_path / "served")
    assert load_bundle(served).symbols == load_bundle(root).symbols
    args = [
        "act",
        "--model",
        f"models:/{NAME}@{CHAMPION}",
        "--data",
        str(root / "canonical"),
        "--params",
        PARAMS,
    ]
    assert main([*args, *(x for t in tracking for x in ("--set", t))]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == act(root, root / "canonical")  # the same models as the pipeline's folders
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--model",
        f"models:/{NAME}@{CHAMPION}",
        "--data",
        str(root / "canonical"),
        "--out",
        str(out),
    ]
    sets = [x for t in [*tracking, "walk_forward.cost_bps=[0]"] for x in ("--set", t)]
    assert main([*args, "--params", PARAMS, *sets]) == 0
    capsys.readouterr()
    assert json.loads((out / "metrics.json").read_text())["policy"]["num_bars"] > 0

    # 2. go, but its walk-forward trails the champion on the same bars beyond the margin (it pays
    #    500 bps per round trip): not promoted; the champion is evaluated with the same code
    costly = model_config(root, *tracking, "env.commission_bps_round_trip=500")
    wf = walk_forward(root, costly, tmp_path / "wf_costly")
    metrics, second = promote(root, costly, go, wf, tmp_path / "p2")
    challenger, champion = second["metrics"]["challenger"], second["metrics"]["champion"]
    assert champion["sharpe"] == pytest.approx(first["metrics"]["challenger"]["sharpe"], rel=1e-9)
    assert champion["sharpe"] - challenger["sharpe"] > cfg.gate.promotion.margin
    assert second["decision"] == "not-promoted" and "trails champion v1" in second["reason"]
    assert "both evaluated on fold_0" in second["comparison"]
    assert second["champion"] == "1" and str(registry.champion(NAME).version) == "1"
    assert registry.client.get_model_version(NAME, second["version"]).tags["status"] == "not-promoted"
    assert metrics["promoted"] == 0.0 and metrics["champion_sharpe"] == pytest.approx(champion["sharpe"])

    # 3. no-go: registered, tagged rejected, no alias moves, no comparison
    _, third = promote(root, cfg, no_go, root / "walk_forward", tmp_path / "p3")
    tags = registry.client.get_model_version(NAME, third["version"]).tags
    assert third["decision"] == "rejected" and tags["status"] == "rejected"
    assert tags["gate.failing"] == "symbol_walk_forward_sharpe" and third["metrics"]["champion"] is None
    assert (
        str(registry.champion(NAME).version) == "1"
        and registry.version_by_alias(NAME, "previous-champion") is None
    )

    # 4. a champion trained on other inputs (a regime feature this data lacks) cannot be evaluated here:
    #    it is compared by its recorded metric, and the decision says so
    other = tmp_path / "other"
    shutil.copytree(served, other)
    meta = json.loads((other / "features" / "meta.json").read_text())
    meta["regime_names"] = [*meta["regime_names"], "made_up_regime"]
    (other / "features" / "meta.json").write_text(json.dumps(meta))
    v_other = registry.register(NAME, other)
    assert registry.promote(
        NAME, v_other, json.loads((go / "gate.json").read_text()), {"sharpe": -50.0}, {"sharpe": -60.0}
    ).promoted
    _, fourth = promote(root, cfg, go, root / "walk_forward", tmp_path / "p4")
    assert "made_up_regime" in fourth["comparison"] and "recorded metric" in fourth["comparison"]
    assert fourth["decision"] == "promoted" and "(recorded)" in fourth["reason"]
    assert fourth["previous_champion"] == v_other and fourth["metrics"]["champion"] is None
    assert str(registry.champion(NAME).version) == fourth["version"]
    assert fourth["metrics"]["challenger"]["sharpe"] == pytest.approx(
        first["metrics"]["challenger"]["sharpe"]
    )
    assert fourth["periods"] == ["fold_0"]
