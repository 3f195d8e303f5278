"""Model registry on a real SQLite MLflow store: register, promote (go / no-go / champion-challenger),
rollback; ``models:/name@champion`` must resolve to the right version after every operation."""

from __future__ import annotations

import json

import pytest

from hmarl.config import TrackingConfig
from hmarl.errors import StepError
from hmarl.evaluation.gate import evaluate_gate
from hmarl.evaluation.params import GateConfig
from hmarl.tracking.registry import ModelRegistry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    cfg = TrackingConfig(
        mlflow_uri=f"sqlite:///{folder}/mlruns.db",
        artifact_root=str(folder / "artifacts"),
        experiment="promote",
    )
    return ModelRegistry(cfg)


def _bundle(tmp_path, tag: str):
    b = tmp_path / f"bundle-{tag}"
    (b / "agents").mkdir(parents=True)
    (b / "agents" / "agent.pt").write_bytes(f"weights {tag}".encode())
    (b / "manifest.json").write_text(
        json.dumps({"fingerprint": f"fp-{tag}", "version": 3, "nested": {"x": 1}})
    )
    return b


def _verdict(go: bool):
    cfg = GateConfig()
    values = {n: c.threshold + (1 if c.op in (">", ">=") else -1) for n, c in cfg.criteria.items()}
    if not go:
        values["symbol_walk_forward_sharpe"] = 0.1
    return evaluate_gate(values, cfg)


def _champion_content(registry, name, tmp_path) -> str:
    """What ``models:/<name>@champion`` downloads (the bundle's agent file)."""
    folder = registry.download(f"models:/{name}@champion", tmp_path / f"dl-{len(list(tmp_path.iterdir()))}")
    return (folder / "agents" / "agent.pt").read_text()


def test_register_records_bundle_manifest_and_lineage(registry, tmp_path):
    bundle = _bundle(tmp_path, "a")
    v = registry.register("lineage-model", bundle, lineage={"train_symbols": "run123", "gate": "run456"})
    mv = registry.client.get_model_version("lineage-model", v)
    assert v == "1" and mv.tags["status"] == "registered"
    assert mv.tags["lineage.train_symbols"] == "run123" and mv.tags["lineage.gate"] == "run456"
    assert mv.tags["manifest.fingerprint"] == "fp-a" and "manifest.nested" not in mv.tags
    assert mv.tags["bundle.num_files"] == "2" and len(mv.tags["bundle.sha256"]) == 64
    run = registry.client.get_run(mv.run_id)
    assert run.data.tags["lineage.train_symbols"] == "run123" and run.info.status == "FINISHED"
    got = registry.download("models:/lineage-model/1", tmp_path / "dl")
    assert (got / "agents" / "agent.pt").read_bytes() == (bundle / "agents" / "agent.pt").read_bytes()
    # same content -> same digest; different content -> different digest
    v2 = registry.register("lineage-model", _bundle(tmp_path / "again", "a"))
    v3 = registry.register("lineage-model", _bundle(tmp_path, "b"))
    tags = {
        x: registry.client.get_model_version("lineage-model", x).tags["bundle.sha256"] for x in (v, v2, v3)
    }
    assert tags[v] == tags[v2] != tags[v3]
    with pytest.raises(StepError, match="not found"):
        registry.register("lineage-model", tmp_path / "nope")


def test_promotion_lifecycle_and_rollback(registry, tmp_path, monkeypatch):
    name = "policy"
    v1 = registry.register(name, _bundle(tmp_path, "v1"))
    d = registry.promote(name, v1, _verdict(True), {"sharpe": 1.0})
    assert d.promoted and d.champion == v1 and d.previous_champion is None
    assert _champion_content(registry, name, tmp_path) == "weights v1"
    # the standard MLflow resolution of the alias agrees
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.cfg.mlflow_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry.cfg.mlflow_uri)
    std = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "std"))
    assert (tmp_path / "std" / "agents" / "agent.pt").read_text() == "weights v1", std

    # no-go: registered, rejected with its failing criteria, no alias moves
    v2 = registry.register(name, _bundle(tmp_path, "v2"))
    d = registry.promote(name, v2, _verdict(False), {"sharpe": 5.0})
    mv2 = registry.client.get_model_version(name, v2)
    assert not d.promoted and mv2.tags["status"] == "rejected"
    assert (
        mv2.tags["gate.failing"] == "symbol_walk_forward_sharpe"
        and "gate no-go" in mv2.tags["promotion.reason"]
    )
    assert (
        str(registry.champion(name).version) == v1
        and _champion_content(registry, name, tmp_path) == "weights v1"
    )

    # go, but worse than the champion on the same folds by more than the margin
    v3 = registry.register(name, _bundle(tmp_path, "v3"))
    d = registry.promote(
        name, v3, _verdict(True), {"sharpe": 0.8}, champion_metrics={"sharpe": 0.9}, margin=0.05
    )
    assert not d.promoted and "trails champion" in d.reason
    assert registry.client.get_model_version(name, v3).tags["status"] == "not-promoted"
    assert str(registry.champion(name).version) == v1

    # go and within the margin of the recorded champion metric (1.0): promoted, v1 kept for rollback
    v4 = registry.register(name, _bundle(tmp_path, "v4"))
    d = registry.promote(name, v4, _verdict(True).to_dict(), {"sharpe": 0.97}, margin=0.05)
    assert d.promoted and d.champion == v4 and d.previous_champion == v1 and "recorded" in d.reason
    assert _champion_content(registry, name, tmp_path) == "weights v4"
    assert str(registry.version_by_alias(name, "previous-champion").version) == v1

    v5 = registry.register(name, _bundle(tmp_path, "v5"))
    d = registry.promote(name, v5, _verdict(True), {"sharpe": 1.4}, champion_metrics={"sharpe": 1.1})
    assert d.promoted and (d.champion, d.previous_champion) == (v5, v4)

    # rollback walks back: v5 -> v4 (previous: v1) -> v1 (no previous) -> error
    d = registry.rollback(name)
    assert (d.champion, d.previous_champion) == (v4, v1)
    assert _champion_content(registry, name, tmp_path) == "weights v4"
    assert registry.client.get_model_version(name, v5).tags["status"] == "rolled-back"
    d = registry.rollback(name)
    assert (d.champion, d.previous_champion) == (v1, None)
    assert _champion_content(registry, name, tmp_path) == "weights v1"
    with pytest.raises(StepError, match="no 'previous-champion'"):
        registry.rollback(name)


def test_promotion_fails_closed_on_missing_metrics(registry, tmp_path):
    name = "strict"
    v1 = registry.register(name, _bundle(tmp_path, "s1"))
    d = registry.promote(name, v1, _verdict(True), {"total_return": 0.3})  # no sharpe
    assert not d.promoted and registry.champion(name) is None
    assert registry.promote(name, v1, _verdict(True), {"sharpe": float("nan")}).promoted is False
    assert registry.promote(name, v1, _verdict(True), {"sharpe": 0.7}).promoted
    v2 = registry.register(name, _bundle(tmp_path, "s2"))
    d = registry.promote(name, v2, _verdict(True), {"sharpe": 2.0}, champion_metrics={"other": 1.0})
    assert not d.promoted and "no finite 'sharpe'" in d.reason and str(registry.champion(name).version) == v1
    # a gate.json dict without a decision is not a go
    assert registry.promote(name, v2, {"failing": []}, {"sharpe": 2.0}).promoted is False
    # lower-is-better metrics (e.g. drawdown) compare the other way
    d = registry.promote(
        name,
        v2,
        _verdict(True),
        {"max_drawdown": 0.30},
        champion_metrics={"max_drawdown": 0.20},
        metric="max_drawdown",
        higher_is_better=False,
        margin=0.05,
    )
    assert not d.promoted
    with pytest.raises(StepError, match="no model version has alias"):
        registry.download("models:/strict@nope", tmp_path / "x")
