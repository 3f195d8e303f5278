"""A tiny tracking interface over MLflow; steps call only these methods, so other back ends (TensorBoard)
can sit behind the same calls.

It talks to MLflow through an explicit ``MlflowClient`` (no global ``mlflow.set_tracking_uri``), so two
trackers with different stores never interfere. With ``tracking.enabled: false`` every call is a no-op and
MLflow is not even imported.

    with Tracker(cfg.tracking).start_run("sl_cache", tags={"profile": cfg.profile}) as tr:
        tr.log_params(flatten_params({"sl": cfg.sl.model_dump()}))
        tr.log_metrics({"mlp_test_auc": 0.61})
        tr.log_artifact("data/sl_cache/manifest.json")
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hmarl.config import TrackingConfig
from hmarl.tracking.remote import check_server, permission_error
from hmarl.tracking.scratch import is_remote

_PARAM_CHUNK, _METRIC_CHUNK, _PARAM_MAX_CHARS = 100, 1000, 6000  # MLflow log_batch limits


def flatten_params(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"sl": {"mlp": {"hidden": 64}}}`` -> ``{"sl.mlp.hidden": 64}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = value
    return out


def artifact_location(cfg: TrackingConfig) -> dict[str, str]:
    """``artifact_location`` for a new experiment: the local ``artifact_root`` with a local store (SQLite,
    files); none with a tracking server, whose own artifact root (``mlflow-artifacts:``, proxied to its
    object store) must hold the artifacts: a local path would leave them on the pod's disk."""
    if is_remote(cfg.mlflow_uri):
        return {}
    return {"artifact_location": Path(cfg.artifact_root).resolve().as_uri()}


def connect(cfg: TrackingConfig):
    """An ``MlflowClient`` of ``cfg.mlflow_uri`` (tracking and registry); a remote server is checked first
    (:func:`hmarl.tracking.remote.check_server`: reachable, credentials accepted)."""
    from mlflow import MlflowClient

    if is_remote(cfg.mlflow_uri):
        check_server(cfg.mlflow_uri)
    return MlflowClient(tracking_uri=cfg.mlflow_uri, registry_uri=cfg.mlflow_uri)


class Tracker:
    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.client = None
        self.run_id: str | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.cfg.experiment, **artifact_location(self.cfg))
        except MlflowException as exc:  # created concurrently by another step, or not ours to create
            if (denied := permission_error(exc, self.cfg.mlflow_uri, "create experiments")) is not None:
                raise denied from None
            return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    @contextmanager
    def start_run(self, name: str, tags: dict[str, str] | None = None) -> Iterator[Tracker]:
        """One run for the duration of the block; marked FAILED if the block raises."""
        if not self.enabled:
            yield self
            return
        from mlflow.exceptions import MlflowException

        self.client = connect(self.cfg)
        try:
            run = self.client.create_run(self._experiment_id(), run_name=name, tags=dict(tags or {}))
        except MlflowException as exc:
            if (denied := permission_error(exc, self.cfg.mlflow_uri, "create runs")) is not None:
                raise denied from None
            raise
        self.run_id = run.info.run_id
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        finally:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None

    def _active(self) -> bool:
        if not self.enabled:
            return False
        if self.run_id is None:
            raise RuntimeError("Tracker: log call outside start_run()")
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        if not self._active():
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), _PARAM_CHUNK):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAM_CHUNK])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Finite numbers only (NaN means 'not defined here' and is left out)."""
        if not self._active():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if math.isfinite(float(v))]
        for i in range(0, len(items), _METRIC_CHUNK):
            self.client.log_batch(self.run_id, metrics=items[i : i + _METRIC_CHUNK])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self._active():
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._active():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self._active():
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)
