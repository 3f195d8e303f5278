"""The one helper KFP component bodies call: pipeline parameters -> config, step run, metrics out.

Components (``components/<step>.py``) are serialized into the pipeline IR and executed in the project
image, so their bodies only import this module and call :func:`run_step`. The pipeline resolves its
parameters once (:func:`resolve_config`, the ``resolve-config`` task) into the full validated config as
YAML text; every step task receives that text, so a bad override fails before any data is touched and
the Kubeflow UI shows each task's exact configuration.

Outputs go through :func:`hmarl.steps.runner.execute` (all-or-nothing, same as the CLI and DVC), with
KFP artifact paths in place of the default paths.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import yaml

from hmarl.config import ConfigError, HmarlConfig, build_config, config_dict
from hmarl.io import write_json

log = logging.getLogger(__name__)


class Artifact(Protocol):
    """What this module needs of a ``kfp.dsl`` artifact (Dataset, Model, Metrics, HTML, ...)."""

    path: str


class MetricsArtifact(Artifact, Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def parse_overrides(overrides: Sequence[str] | str | None) -> list[str]:
    """The ``overrides`` pipeline parameter: a list of ``KEY.PATH=VALUE``, or the same as a JSON list."""
    if overrides is None or overrides == "":
        return []
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError:
            raise ConfigError(f"overrides: {overrides!r} is neither a list nor a JSON list") from None
    if not isinstance(overrides, list | tuple) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides: expected a list of KEY.PATH=VALUE strings, got {overrides!r}")
    return list(overrides)


def _quoted(value: str) -> str:
    """A YAML scalar that parses back to exactly ``value`` (overrides are parsed as YAML)."""
    return json.dumps(value)


def pipeline_overrides(
    profile: str = "",
    overrides: Sequence[str] | str | None = (),
    data_uri: str = "",
    mlflow_uri: str = "",
) -> list[str]:
    """The dedicated pipeline parameters as ``--set`` overrides; '' leaves the params file's value.

    The ``overrides`` list comes last, so an explicit override is the most specific setting.
    """
    out = []
    if profile:
        out.append(f"profile={_quoted(profile)}")
    if data_uri:
        out += ["data.source=path", f"data.path={_quoted(data_uri)}"]
    if mlflow_uri:
        out.append(f"tracking.mlflow_uri={_quoted(mlflow_uri)}")
    return out + parse_overrides(overrides)


def resolve_config(
    params_yaml: str,
    profile: str = "",
    overrides: Sequence[str] | str | None = (),
    data_uri: str = "",
    mlflow_uri: str = "",
    env: Mapping[str, str] | None = None,
) -> str:
    """The validated config (profile overlay and overrides applied) as YAML text for the step tasks.

    With ``mlflow_uri`` '' the tracking server is ``MLFLOW_TRACKING_URI`` of ``env`` when set (on the
    cluster: from the ``hmarl-pipeline-env`` ConfigMap), else the params' ``tracking.mlflow_uri``.
    """
    try:
        raw = yaml.safe_load(params_yaml) if params_yaml.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params_yaml: not valid YAML ({exc})") from None
    mlflow_uri = mlflow_uri or (env or {}).get("MLFLOW_TRACKING_URI", "")
    cfg = build_config(raw, pipeline_overrides(profile, overrides, data_uri, mlflow_uri))
    return yaml.safe_dump(config_dict(cfg), sort_keys=False)


def load_config(config: str, overrides: Sequence[str] = ()) -> HmarlConfig:
    """A step task's config from :func:`resolve_config`'s text (plus per-task overrides, e.g. a seed)."""
    return build_config(yaml.safe_load(config), list(overrides))


def emit_metrics(metrics: MetricsArtifact, values: Mapping[str, float]) -> dict[str, float]:
    """Log the step's metrics to a KFP ``Metrics`` artifact (shown in the Kubeflow UI), and write them
    as JSON to the artifact's file, so it exists (kfp's local cache ignores entries whose files are gone).

    Non-finite values are left out: the executor output is JSON, which has no NaN/inf.
    """
    logged = {}
    for name in sorted(values):
        value = float(values[name])
        if not math.isfinite(value):
            log.warning("metric %s=%s is not finite; not logged to KFP", name, value)
            continue
        metrics.log_metric(name, value)
        logged[name] = value
    write_json(metrics.path, logged)
    return logged


def _paths(artifacts: Mapping[str, Artifact] | None) -> dict[str, str]:
    return {name: art.path for name, art in (artifacts or {}).items()}


def publish_views(outputs: Mapping[str, Artifact], views: Mapping[str, Artifact]) -> None:
    """Copy a file from inside an output (``"<output>/<file>"``) to a UI artifact (HTML, Markdown)."""
    for source, artifact in views.items():
        output, _, inner = source.partition("/")
        if output not in outputs or not inner:
            raise ValueError(f"view {source!r}: expected '<output>/<file>' with output in {sorted(outputs)}")
        src = Path(outputs[output].path) / inner
        if not src.is_file():
            raise FileNotFoundError(f"view {source!r}: {src} was not written by the step")
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, artifact.path)


def run_step(
    step: str,
    config: str,
    *,
    inputs: Mapping[str, Artifact] | None = None,
    outputs: Mapping[str, Artifact] | None = None,
    metrics: MetricsArtifact | None = None,
    views: Mapping[str, Artifact] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, float]:
    """Run ``hmarl.steps.<step>`` on KFP artifacts: the body of every step component.

    ``inputs`` / ``outputs`` map the step's INPUTS / OUTPUTS names to artifacts; ``views`` copies report
    files out of the outputs into UI artifacts; ``overrides`` apply on top of the resolved config.
    """
    from hmarl.steps.runner import execute

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(config, overrides)
    values = execute(step, cfg, _paths(inputs), _paths(outputs))
    if views:
        publish_views(outputs or {}, views)
    if metrics is not None:
        emit_metrics(metrics, values)
    return values
