"""MLflow model registry: register a model bundle, promote on "go", roll back.

Aliases carry the state: ``champion`` is what ``hmarl act`` serves (``models:/<name>@champion``);
``previous-champion`` is the version it replaced (rollback target). Tags on each version record why:
``status`` (registered / rejected / not-promoted / champion / previous-champion / rolled-back),
``promotion.reason``, the gate's failing criteria, the challenger metrics, and lineage to the runs that
produced the bundle. Every version remembers the champion it replaced (``promotion.replaced``), so
repeated rollbacks walk back through the history.

Like :class:`hmarl.tracking.Tracker` it talks to MLflow through an explicit ``MlflowClient`` (tracking and
registry URI = ``tracking.mlflow_uri``); no global MLflow state is changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmarl.config import TrackingConfig
from hmarl.errors import StepError
from hmarl.tracking.remote import permission_error
from hmarl.tracking.tracker import Tracker, connect

CHAMPION = "champion"
PREVIOUS = "previous-champion"
BUNDLE_PATH = "bundle"  # artifact folder of the registering run that holds the model bundle
_TAG_MAX = 5000  # MLflow tag value limit


@dataclass(frozen=True)
class Decision:
    promoted: bool
    version: str
    champion: str | None  # champion version after the decision
    previous_champion: str | None
    reason: str


def bundle_manifest(folder: str | Path) -> dict[str, Any]:
    """Files of a bundle with size and sha256, plus a digest over all of them (content identity)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StepError(f"{folder}: model bundle folder not found")
    files = {}
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        files[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size, "sha256": h.hexdigest()}
    if not files:
        raise StepError(f"{folder}: model bundle folder is empty")
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {
        "files": files,
        "sha256": digest,
        "num_files": len(files),
        "bytes": sum(f["bytes"] for f in files.values()),
    }


def _verdict_parts(verdict: Any) -> tuple[bool, list[str]]:
    """(go, failing criteria) of a :class:`hmarl.evaluation.gate.Verdict` or its gate.json dict."""
    if isinstance(verdict, Mapping):
        return bool(verdict.get("go", False)) and verdict.get("decision") == "go", list(
            verdict.get("failing", [])
        )
    return bool(verdict.go), list(verdict.failing)


class ModelRegistry:
    """The registry of ``cfg.mlflow_uri``. It ignores ``cfg.enabled``: registering is the point of using it
    (a step with tracking switched off should not construct one)."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.client = connect(cfg)

    # ------------------------------------------------------------------ lookups
    def version_by_alias(self, name: str, alias: str):
        """The ModelVersion an alias points at, or None (also when the model does not exist yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def champion(self, name: str):
        return self.version_by_alias(name, CHAMPION)

    def download(self, uri: str, dst: str | Path) -> Path:
        """Fetch ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` into ``dst``; returns the folder."""
        import mlflow.artifacts

        if not uri.startswith("models:/"):
            raise StepError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = self.version_by_alias(name, alias)
            if mv is None:
                raise StepError(f"{uri}: no model version has alias {alias!r} in registered model {name!r}")
        else:
            name, _, version = ref.partition("/")
            mv = self.client.get_model_version(name, version)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst)))

    # ------------------------------------------------------------------ register
    def register(
        self,
        name: str,
        folder: str | Path,
        lineage: Mapping[str, str] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Register ``folder`` (the model bundle) as a new version of ``name``; returns the version.

        A ``register`` run in ``tracking.experiment`` stores the folder under ``bundle/`` with its file
        manifest; ``lineage`` (step -> run id, e.g. ``{"train_symbols": ..., "gate": ...}``) becomes
        ``lineage.<step>`` tags on the run and the version. ``bundle.sha256`` identifies the content;
        the scalar fields of the bundle's own ``manifest.json`` (fingerprint, version, ...) become
        ``manifest.<key>`` tags."""
        from mlflow.exceptions import MlflowException

        manifest = bundle_manifest(folder)
        lineage_tags = {f"lineage.{k}": str(v) for k, v in (lineage or {}).items()}
        version_tags = {
            **lineage_tags,
            **_manifest_tags(Path(folder)),
            "bundle.sha256": manifest["sha256"],
            "bundle.num_files": manifest["num_files"],
            "bundle.bytes": manifest["bytes"],
            "status": "registered",
            **dict(tags or {}),
        }
        with Tracker(self.cfg.model_copy(update={"enabled": True})).start_run(
            f"register-{name}", tags={"step": "register", **lineage_tags}
        ) as tr:
            tr.log_artifacts(folder, BUNDLE_PATH)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bundle_manifest.json"
                path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
                tr.log_artifact(path)
            run_id = tr.run_id
            source = f"{self.client.get_run(run_id).info.artifact_uri}/{BUNDLE_PATH}"
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:  # exists already (or was created concurrently): fine
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                denied = permission_error(exc, self.cfg.mlflow_uri, "register models")
                raise denied or exc from None
        mv = self.client.create_model_version(
            name, source, run_id=run_id, tags={k: _tag(v) for k, v in version_tags.items()}
        )
        return str(mv.version)

    # ------------------------------------------------------------------ promote / rollback
    def _tag_version(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, _tag(v))

    def promote(
        self,
        name: str,
        version: str,
        verdict: Any,
        challenger_metrics: Mapping[str, float],
        champion_metrics: Mapping[str, float] | None = None,
        metric: str = "sharpe",
        margin: float = 0.05,
        higher_is_better: bool = True,
    ) -> Decision:
        """Move ``champion`` to ``version`` if the gate said go and it is not worse than the current
        champion on ``metric`` by more than ``margin``.

        ``champion_metrics`` should be the current champion evaluated on the same test folds as the
        challenger; without it the champion's recorded ``metric.<metric>`` tag is used. A missing or
        non-finite metric on either side refuses promotion (fails closed). The decision and its reason are
        recorded as tags on ``version``; on no-go it is tagged ``status=rejected`` and no alias moves."""
        version = str(version)
        go, failing = _verdict_parts(verdict)
        current = self.champion(name)
        current_v = str(current.version) if current is not None else None
        metric_tags = {f"metric.{k}": v for k, v in challenger_metrics.items()}
        decided = {"promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

        def refuse(status: str, reason: str) -> Decision:
            self._tag_version(
                name, version, {**metric_tags, **decided, "status": status, "promotion.reason": reason}
            )
            prev = self.version_by_alias(name, PREVIOUS)
            return Decision(False, version, current_v, str(prev.version) if prev else None, reason)

        if not go:
            self.client.set_model_version_tag(name, version, "gate.failing", _tag(",".join(failing)))
            return refuse("rejected", f"gate no-go: failing {', '.join(failing) or '(unspecified)'}")
        challenger = _finite(challenger_metrics.get(metric))
        if challenger is None:
            return refuse("not-promoted", f"challenger has no finite {metric!r}")
        if current is not None and current_v != version:
            if champion_metrics is not None:
                source, champ = "same test folds", _finite(champion_metrics.get(metric))
            else:
                source, champ = "recorded", _finite(current.tags.get(f"metric.{metric}"))
            if champ is None:
                return refuse("not-promoted", f"champion v{current_v} has no finite {metric!r} ({source})")
            shortfall = (champ - challenger) if higher_is_better else (challenger - champ)
            if shortfall > margin:
                return refuse(
                    "not-promoted",
                    f"{metric} {challenger:.6g} trails champion v{current_v} "
                    f"({champ:.6g}, {source}) by more than {margin:g}",
                )
            reason = f"gate go; {metric} {challenger:.6g} vs champion v{current_v} {champ:.6g} ({source})"
        else:
            reason = (
                f"gate go; {metric} {challenger:.6g}; first champion"
                if current is None
                else f"gate go; v{version} is already the champion"
            )
        if current is not None and current_v != version:
            self.client.set_registered_model_alias(name, PREVIOUS, current_v)
            self._tag_version(name, current_v, {"status": PREVIOUS})
            self._tag_version(name, version, {"promotion.replaced": current_v})
        self.client.set_registered_model_alias(name, CHAMPION, version)
        self._tag_version(
            name, version, {**metric_tags, **decided, "status": CHAMPION, "promotion.reason": reason}
        )
        prev = self.version_by_alias(name, PREVIOUS)
        return Decision(True, version, version, str(prev.version) if prev else None, reason)

    def rollback(self, name: str) -> Decision:
        """``champion`` back to ``previous-champion``; ``previous-champion`` moves one step further back
        (the version that one replaced) or is removed. The demoted version is tagged ``rolled-back``."""
        current, prev = self.champion(name), self.version_by_alias(name, PREVIOUS)
        if prev is None:
            raise StepError(f"registered model {name!r}: no {PREVIOUS!r} version to roll back to")
        target = str(prev.version)
        self.client.set_registered_model_alias(name, CHAMPION, target)
        if current is not None:
            self._tag_version(name, str(current.version), {"status": "rolled-back"})
        self._tag_version(name, target, {"status": CHAMPION, "promotion.reason": "rollback"})
        older = prev.tags.get("promotion.replaced")
        if older and older != target:
            self.client.set_registered_model_alias(name, PREVIOUS, older)
        else:
            self.client.delete_registered_model_alias(name, PREVIOUS)
        after = self.version_by_alias(name, PREVIOUS)
        return Decision(
            True,
            target,
            target,
            str(after.version) if after else None,
            f"rollback from v{current.version if current else '?'}",
        )


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _tag(value: Any) -> str:
    return str(value)[:_TAG_MAX]


def _manifest_tags(folder: Path) -> dict[str, str]:
    """Scalar top-level fields of the bundle's ``manifest.json`` (if any) as ``manifest.<key>``."""
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StepError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        return {}
    return {
        f"manifest.{k}": str(v)[:250]
        for k, v in data.items()
        if isinstance(v, str | int | float | bool) and v is not None
    }
