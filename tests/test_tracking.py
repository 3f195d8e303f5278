"""The tracking interface writes real MLflow runs (SQLite store + local artifacts in tmp_path)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from hmarl.config import TrackingConfig
from hmarl.steps.runner import execute
from hmarl.tracking import Tracker, flatten_params
from sl_fixtures import one_thread, shared_store, small_config  # noqa: F401


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One SQLite store for the module (creating its tables costs seconds); one experiment per test."""
    return tmp_path_factory.mktemp("mlflow")


def _cfg(folder, experiment: str = "test", **kw) -> TrackingConfig:
    return TrackingConfig(
        mlflow_uri=f"sqlite:///{folder}/mlruns.db",
        artifact_root=str(folder / "artifacts" / experiment),
        experiment=experiment,
        **kw,
    )


def _only_run(cfg: TrackingConfig):
    client = MlflowClient(cfg.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, exp, runs[0]


def test_run_records_params_metrics_tags_and_artifacts(store_dir, tmp_path):
    cfg = _cfg(store_dir, "records")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.json").write_text("{}")
    with Tracker(cfg).start_run("unit", tags={"step": "unit"}) as tr:
        tr.log_params({"sl": {"mlp": {"hidden": 64}}, "seed": 3})
        tr.log_metrics({"auc": 0.61, "undefined": float("nan")})
        tr.log_metrics({"auc": 0.63}, step=2)
        tr.set_tags({"profile": "smoke"})
        tr.log_artifact(note)
        tr.log_artifacts(tmp_path / "folder", "reports")
    client, exp, run = _only_run(cfg)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit"
    assert run.data.params == {"sl.mlp.hidden": "64", "seed": "3"}
    assert run.data.metrics == {"auc": 0.63}  # latest value; NaN left out
    assert [m.value for m in client.get_metric_history(run.info.run_id, "auc")] == [0.61, 0.63]
    assert run.data.tags["step"] == "unit" and run.data.tags["profile"] == "smoke"
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["note.txt", "reports"]
    assert exp.artifact_location == (store_dir / "artifacts" / "records").resolve().as_uri()


def test_failed_block_marks_the_run_failed(store_dir):
    cfg = _cfg(store_dir, "failing")
    with pytest.raises(ValueError, match="boom"), Tracker(cfg).start_run("failing") as tr:
        tr.log_metrics({"x": 1.0})
        raise ValueError("boom")
    _, _, run = _only_run(cfg)
    assert run.info.status == "FAILED" and run.data.metrics == {"x": 1.0}


def test_disabled_tracker_writes_nothing(tmp_path):
    tr = Tracker(_cfg(tmp_path, enabled=False))
    with tr.start_run("off") as t:
        t.log_params({"a": 1})
        t.log_metrics({"b": 2.0})
        t.log_artifact(tmp_path / "missing.txt")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="outside start_run"):
        Tracker(_cfg(tmp_path)).log_metrics({"b": 2.0})


def test_flatten_params():
    assert flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None}) == {
        "a.b.c": 1,
        "a.d": [1, 2],
        "e": None,
    }


@pytest.mark.usefixtures("one_thread")
def test_sl_cache_step_logs_its_run(tmp_path_factory, tmp_path):
    cfg = small_config(
        "planted_alpha",
        "sl.max_epochs=1",
        "sl.inner_folds=2",
        "tracking.enabled=true",
        f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
    )
    metrics = execute(
        "sl_cache",
        cfg,
        {"store": str(shared_store(tmp_path_factory, "planted_alpha"))},
        {"cache": str(tmp_path / "sl_cache")},
    )
    client, _, run = _only_run(cfg.tracking)
    assert run.info.status == "FINISHED" and run.data.tags["step"] == "sl_cache"
    assert run.data.metrics["gru_test_auc"] == pytest.approx(metrics["gru_test_auc"])
    assert run.data.params["sl.inner_folds"] == "2"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"manifest.json", "metrics.json"}
