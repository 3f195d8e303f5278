"""TensorBoard behind the same small interface as :class:`hmarl.tracking.tracker.Tracker`, and a fan-out
that drives several trackers with one set of calls.

    trackers = Trackers(Tracker(cfg.tracking), TensorBoardTracker(cfg.tracking))
    with trackers.start_run("train_symbols", tags={...}) as tr:
        tr.log_metrics({"charts/SPS": 1.2e5}, step=global_step)
        tr.log_histogram("charts/action_distribution", actions, step=global_step)

TensorBoard writes event files under ``tracking.tensorboard_dir/<run name>/<time>``; it has no artifact
store, so ``log_artifact(s)`` are no-ops there. When a run ends without error, :class:`Trackers` logs the
event files to the other trackers as ``tensorboard/<time>/`` artifacts, so on a cluster they outlive the
pod (through the tracking server's artifact store). ``log_histogram`` exists only here (MLflow has none).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from hmarl.config import TrackingConfig
from hmarl.tracking.tracker import flatten_params


class TensorBoardTracker:
    def __init__(self, cfg: TrackingConfig, log_dir: str | Path | None = None):
        self.cfg = cfg
        self.root = Path(log_dir or cfg.tensorboard_dir)
        self.writer = None
        self.log_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    @contextmanager
    def start_run(self, name: str, tags: dict[str, str] | None = None) -> Iterator[TensorBoardTracker]:
        if not self.enabled:
            yield self
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard (~1.5 s): only when used

        self.log_dir = self.root / name / time.strftime("%Y%m%d-%H%M%S")
        self.writer = SummaryWriter(str(self.log_dir))
        try:
            if tags:
                self.set_tags(tags)
            yield self
        finally:
            self.writer.close()
            self.writer = None

    def _active(self) -> bool:
        if not self.enabled:
            return False
        if self.writer is None:
            raise RuntimeError("TensorBoardTracker: log call outside start_run()")
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        if self._active():
            rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(flatten_params(params).items()))
            self.writer.add_text("params", "| param | value |\n|---|---|\n" + rows)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self._active():
            return
        for key, value in metrics.items():
            if math.isfinite(float(value)):
                self.writer.add_scalar(key, float(value), step or 0)

    def log_histogram(self, tag: str, values, step: int | None = None, bins: Any = "auto") -> None:
        if self._active():
            self.writer.add_histogram(tag, values, step or 0, bins=bins)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._active():
            self.writer.add_text("tags", "\n".join(f"{k}: {v}" for k, v in tags.items()))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """TensorBoard has no artifact store."""

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """TensorBoard has no artifact store."""


class Trackers:
    """Several trackers driven as one: every call goes to each (``log_histogram`` to those that have it)."""

    def __init__(self, *trackers):
        self.trackers = trackers

    @property
    def enabled(self) -> bool:
        return any(t.enabled for t in self.trackers)

    @contextmanager
    def start_run(self, name: str, tags: dict[str, str] | None = None) -> Iterator[Trackers]:
        with ExitStack() as stack:
            for t in self.trackers:
                stack.enter_context(t.start_run(name, tags))
            yield self
            self._publish_event_files()

    def _publish_event_files(self) -> None:
        """TensorBoard's event files as artifacts of the trackers that store artifacts (MLflow)."""
        boards = [t for t in self.trackers if getattr(t, "writer", None) is not None]
        for board in boards:
            board.writer.flush()
            for t in self.trackers:
                if t is not board and t.enabled and not isinstance(t, TensorBoardTracker):
                    t.log_artifacts(board.log_dir, f"tensorboard/{board.log_dir.name}")

    def _each(self, method: str, *args, **kwargs) -> None:
        for t in self.trackers:
            fn = getattr(t, method, None)
            if fn is not None:
                fn(*args, **kwargs)

    def log_params(self, params: dict[str, Any]) -> None:
        self._each("log_params", params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._each("log_metrics", metrics, step=step)

    def log_histogram(self, tag: str, values, step: int | None = None, bins: Any = "auto") -> None:
        self._each("log_histogram", tag, values, step=step, bins=bins)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._each("set_tags", tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._each("log_artifact", path, artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._each("log_artifacts", folder, artifact_path)
