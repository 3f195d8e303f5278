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
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import yaml

from hmarl.config import ConfigError, HmarlConfig, build_config, config_dict
from hmarl.errors import StepError
from hmarl.io import write_json
from hmarl.tracking.scratch import scratch_dir, scratch_environment, scratch_overrides

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


def fan_out(name: str, values: Sequence[int | float] | None) -> list[int] | None:
    """A ``seeds`` / ``folds`` pipeline parameter as ints (list items may come back from KFP as floats)."""
    if values is None:
        return None
    if isinstance(values, str):
        try:
            values = json.loads(values)
        except json.JSONDecodeError:
            values = None
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{name}: expected a non-empty list of integers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
            raise ConfigError(f"{name}: {v!r} is not an integer (in {list(values)})")
        out.append(int(v))
    return out


def pipeline_overrides(
    profile: str = "",
    overrides: Sequence[str] | str | None = (),
    data_uri: str = "",
    mlflow_uri: str = "",
    seeds: Sequence[int] | None = None,
    folds: Sequence[int] | None = None,
) -> list[str]:
    """The dedicated pipeline parameters as ``--set`` overrides; '' / None leaves the params file's value.

    The fan-outs set ``stage5.seeds`` / ``walk_forward.folds``, which the gate checks its inputs
    against. The ``overrides`` list comes last, so an explicit override is the most specific setting.
    """
    out = []
    if profile:
        out.append(f"profile={_quoted(profile)}")
    if data_uri:
        out += ["data.source=path", f"data.path={_quoted(data_uri)}"]
    if mlflow_uri:
        out.append(f"tracking.mlflow_uri={_quoted(mlflow_uri)}")
    if seeds is not None:
        out.append(f"stage5.seeds={json.dumps(list(seeds))}")
    if folds is not None:
        out.append(f"walk_forward.folds={json.dumps(list(folds))}")
    return out + parse_overrides(overrides)


def check_fan_out(cfg: HmarlConfig, seeds: Sequence[int] | None, folds: Sequence[int] | None) -> None:
    """The loops the pipeline fans out over must be what the gate will demand: every configured seed,
    every fold of ``splits.n_folds``. Checked before anything runs, not after hours of training."""
    if seeds is not None and list(seeds) != cfg.stage5.seeds:
        raise ConfigError(
            f"seeds {list(seeds)} (the stage5 fan-out) differ from stage5.seeds {cfg.stage5.seeds} set by "
            "the overrides: give the seeds once, as the seeds parameter"
        )
    if folds is not None and list(folds) != cfg.walk_forward.folds:
        raise ConfigError(
            f"folds {list(folds)} (the walk_forward fan-out) differ from walk_forward.folds "
            f"{cfg.walk_forward.folds} set by the overrides: give the folds once, as the folds parameter"
        )
    want = list(range(cfg.splits.n_folds))
    if sorted(cfg.walk_forward.folds) != want:
        raise ConfigError(
            f"walk_forward.folds {cfg.walk_forward.folds}: the gate needs every fold of splits.n_folds="
            f"{cfg.splits.n_folds}, i.e. {want} (set the folds parameter)"
        )


def resolve(
    params_yaml: str,
    profile: str = "",
    overrides: Sequence[str] | str | None = (),
    data_uri: str = "",
    mlflow_uri: str = "",
    env: Mapping[str, str] | None = None,
    seeds: Sequence[int | float] | None = None,
    folds: Sequence[int | float] | None = None,
) -> HmarlConfig:
    """The validated config: params text + profile overlay + the pipeline parameters + overrides.

    With ``mlflow_uri`` '' the tracking server is ``MLFLOW_TRACKING_URI`` of ``env`` when set (on the
    cluster: from the ``hmarl-pipeline-env`` ConfigMap), else the params' ``tracking.mlflow_uri``.
    """
    try:
        raw = yaml.safe_load(params_yaml) if params_yaml.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params_yaml: not valid YAML ({exc})") from None
    mlflow_uri = mlflow_uri or (env or {}).get("MLFLOW_TRACKING_URI", "")
    seeds, folds = fan_out("seeds", seeds), fan_out("folds", folds)
    cfg = build_config(raw, pipeline_overrides(profile, overrides, data_uri, mlflow_uri, seeds, folds))
    check_fan_out(cfg, seeds, folds)
    return cfg


def resolve_config(
    params_yaml: str,
    profile: str = "",
    overrides: Sequence[str] | str | None = (),
    data_uri: str = "",
    mlflow_uri: str = "",
    env: Mapping[str, str] | None = None,
    seeds: Sequence[int | float] | None = None,
    folds: Sequence[int | float] | None = None,
) -> str:
    """:func:`resolve` as YAML text: the ``config`` parameter of every step task."""
    cfg = resolve(params_yaml, profile, overrides, data_uri, mlflow_uri, env, seeds, folds)
    return yaml.safe_dump(config_dict(cfg), sort_keys=False)


def read_config(config_file: Artifact) -> str:
    """The resolved config from resolve-config's ``config_file`` artifact (the loop tasks' copy)."""
    return Path(config_file.path).read_text()


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


def _paths(artifacts: Mapping[str, Artifact | str | Path] | None) -> dict[str, str]:
    return {
        name: str(art) if isinstance(art, str | Path) else art.path for name, art in (artifacts or {}).items()
    }


def nested(artifact: Artifact, name: str) -> Path:
    """``<artifact>/<name>``: a fan-out task writes its step output one level down, so the folder name
    (``seed_<s>``, ``fold_<k>``) travels with the artifact and the gate can lay the outputs out as
    DVC does (``reports/stage5/seed_<s>/``) without knowing which loop iteration made which."""
    Path(artifact.path).mkdir(parents=True, exist_ok=True)
    return Path(artifact.path) / name


def gather(artifacts: Sequence[Artifact], dest: str | Path) -> Path:
    """Copy the sub-folders of collected fan-out artifacts (see :func:`nested`) side by side into
    ``dest``; a name produced twice (two loop iterations over the same seed) is an error."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for art in artifacts:
        src = Path(art.path)
        children = sorted(src.iterdir()) if src.is_dir() else []
        if not children:
            raise StepError(f"collected artifact {src}: empty, expected a <name>/ folder from a fan-out task")
        for child in children:
            if (dest / child.name).exists():
                raise StepError(
                    f"collected artifacts: {child.name!r} produced twice (a repeated seed or fold?)"
                )
            shutil.copytree(child, dest / child.name) if child.is_dir() else shutil.copy2(child, dest)
    return dest


def training_overrides(cfg: HmarlConfig, checkpoint_root: str = "", gpus: int | None = None) -> list[str]:
    """Cluster settings of a training task, as overrides on its config.

    - Relative ``<section>.checkpoint_dir`` (ppo, master) move under ``checkpoint_root`` when that folder
      exists (the PVC the pipeline mounts there): a retried task, e.g. on a pre-empted GPU node, resumes
      from the killed attempt's checkpoints. The run keys ignore checkpoint_dir, so this changes nothing
      that is trained. Without the mount (``run-local``) the params' folders are used.
    - ``<section>.world_size`` (when the section has one and it is left at 1) = the GPUs of the node: one
      DDP process per GPU (:func:`hmarl.learners.distributed.launch`, as torchrun would start them).
    """
    out = []
    root = Path(checkpoint_root) if checkpoint_root else None
    if root is not None and not root.is_dir():
        log.warning("checkpoint root %s is not mounted; checkpoints stay in the scratch folder", root)
        root = None
    if root is not None and not os.access(root, os.W_OK | os.X_OK):
        raise StepError(
            f"checkpoint volume {root}: not writable by UID {os.getuid()} (give the claim's root to the "
            "pods' fsGroup: manifests/README.md, 'Checkpoint volume')"
        )
    if gpus is None:
        gpus = _cuda_devices() if cfg.device != "cpu" else 0
    for name in ("ppo", "master"):
        section = getattr(cfg, name)
        ckpt = getattr(section, "checkpoint_dir", None)
        if root is not None and ckpt and not Path(ckpt).is_absolute():
            out.append(f"{name}.checkpoint_dir={_quoted(str(root / ckpt))}")
        if gpus > 1 and getattr(section, "world_size", None) == 1:
            out.append(f"{name}.world_size={gpus}")
    return out


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def publish_views(outputs: Mapping[str, Artifact | str | Path], views: Mapping[str, Artifact]) -> None:
    """Copy a file from inside an output (``"<output>/<file>"``) to a UI artifact (HTML, Markdown)."""
    for source, artifact in views.items():
        output, _, inner = source.partition("/")
        if output not in outputs or not inner:
            raise ValueError(f"view {source!r}: expected '<output>/<file>' with output in {sorted(outputs)}")
        src = Path(_paths(outputs)[output]) / inner
        if not src.is_file():
            raise FileNotFoundError(f"view {source!r}: {src} was not written by the step")
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, artifact.path)


def run_step(
    step: str,
    config: str,
    *,
    inputs: Mapping[str, Artifact | str | Path] | None = None,
    outputs: Mapping[str, Artifact | str | Path] | None = None,
    metrics: MetricsArtifact | None = None,
    views: Mapping[str, Artifact] | None = None,
    overrides: Sequence[str] = (),
    checkpoint_root: str | None = None,
) -> dict[str, float]:
    """Run ``hmarl.steps.<step>`` on KFP artifacts: the body of every step component.

    ``inputs`` / ``outputs`` map the step's INPUTS / OUTPUTS names to artifacts (or paths, e.g. from
    :func:`nested` / :func:`gather`); ``views`` copies report files out of the outputs into UI
    artifacts; ``overrides`` apply on top of the resolved config. ``checkpoint_root`` marks a training
    task: :func:`training_overrides` apply (checkpoints on the mounted volume, one process per GPU).
    """
    from hmarl.steps.runner import execute

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(config, overrides)
    if checkpoint_root is not None:
        overrides = [*overrides, *training_overrides(cfg, checkpoint_root)]
        cfg = load_config(config, overrides)
    scratch = scratch_dir()  # everything else a task writes: the working directory may be read-only
    os.environ.update(scratch_environment(scratch))
    cfg = load_config(config, [*overrides, *scratch_overrides(cfg, scratch)])
    values = execute(step, cfg, _paths(inputs), _paths(outputs))
    if views:
        publish_views(outputs or {}, views)
    if metrics is not None:
        emit_metrics(metrics, values)
    return values


def verdict(values: Mapping[str, float]) -> bool:
    """The gate step's go/no-go (its ``go`` metric, 1.0 or 0.0) as the bool that ``dsl.If`` tests."""
    if "go" not in values:
        raise StepError(f"gate: no 'go' in the step's metrics {sorted(values)}")
    return float(values["go"]) == 1.0
