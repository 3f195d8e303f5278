"""``hmarl pipeline run-local``: the compiled DAG executed here by kfp's SubprocessRunner (no containers).

Split from :mod:`hmarl.pipeline_cli` (which re-exports these names).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmarl.errors import StepError


# --------------------------------------------------------------------------- local run
@dataclass
class LocalRun:
    """What ``run-local`` produced: per executed task, its output artifact paths and its metrics."""

    run_dir: Path | None  # None when every task was a cache hit
    outputs: dict[str, dict[str, Path]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    output_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)  # top-level tasks served from the local cache


_ITERATION = re.compile(r"-iteration-(\d+)$")


def task_key(run_dir: Path, task_dir: Path) -> str:
    """``features`` for a top-level task; ``stage5[1]`` for iteration 1 of a ParallelFor."""
    iterations = [m.group(1) for p in task_dir.relative_to(run_dir).parts[:-1] if (m := _ITERATION.search(p))]
    return task_dir.name + "".join(f"[{i}]" for i in iterations)


def read_local_run(run_dir: Path) -> LocalRun:
    """Collect every task's executor output (KFP's ExecutorOutput JSON) under a local run folder,
    loop iterations and conditional tasks included."""
    run = LocalRun(run_dir)
    for out_file in sorted(run_dir.glob("**/executor_output.json")):
        task = task_key(run_dir, out_file.parent)
        data = json.loads(out_file.read_text())
        run.output_parameters[task] = data.get("parameterValues", {})
        for name, entry in data.get("artifacts", {}).items():
            art = entry["artifacts"][0]
            run.outputs.setdefault(task, {})[name] = Path(art["uri"])
            if name == "metrics":
                run.metrics[task] = dict(art.get("metadata", {}))
    return run


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextmanager
def local_session(pipeline_root: Path, cache_root: Path, cache: bool = False) -> Iterator[None]:
    """kfp's SubprocessRunner on this environment (where hmarl is installed), its outputs under
    ``pipeline_root``; silences its two expected warnings: the project image is not a python image
    (the runner uses this environment instead) and Kubernetes settings have no effect locally."""
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=cache,
        cache_root=str(cache_root),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You may be attemping to run a task", RuntimeWarning)
        warnings.filterwarnings("ignore", ".*have no effect in the current local runner", UserWarning)
        yield


def without_retries(spec):
    """A copy of a pipeline spec whose tasks never retry. On the cluster a retry outlives a pre-empted
    node; here a failure is a bug, and kfp's local runner would sleep out the backoff (60 s, 120 s, ...)
    before failing the same way again."""
    spec = type(spec).FromString(spec.SerializeToString())
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return spec


def run_local(arguments: dict[str, Any], workdir: str | Path = ".kfp-local", cache: bool = False) -> LocalRun:
    """Execute the DAG here with kfp's SubprocessRunner (this Python environment, no containers).

    The compiled DAG as it is (loops, condition, caching), less the retry policies (see
    :func:`without_retries`); Kubernetes settings (GPU pool, Secrets, PVC) have no effect locally, so the
    training tasks keep their checkpoints where the params put them (relative: under the current folder).
    """
    from kfp.local import pipeline_orchestrator

    from hmarl.pipeline_cli import check_arguments, pipeline_module

    module = pipeline_module()
    defaults = {
        "params_yaml": module.DEFAULT_PARAMS_YAML,
        "seeds": module.DEFAULT_SEEDS,
        "folds": module.DEFAULT_FOLDS,
    }
    arguments = check_arguments(arguments, defaults)
    spec = module.hmarl_pipeline.pipeline_spec
    root = Path(workdir).resolve() / "outputs"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    with local_session(root, Path(workdir).resolve() / "cache", cache):
        try:
            pipeline_orchestrator.run_local_pipeline(pipeline_spec=without_retries(spec), arguments=arguments)
        except RuntimeError as exc:
            new = sorted(set(root.iterdir()) - before)
            where = f" (task outputs under {new[-1]}; task logs above)" if new else ""
            failed = sorted(str(p) for d in new for p in d.glob("**/*.failed/report.html"))
            hint = f"; failure report: {failed[0]}" if failed else ""
            raise StepError(f"local pipeline run failed: {_ANSI.sub('', str(exc))}{where}{hint}") from None
    new = sorted(set(root.iterdir()) - before)  # no folder when every task was a cache hit
    run = read_local_run(new[-1]) if new else LocalRun(None)
    comps = spec.components
    top = {
        n for n, t in spec.root.dag.tasks.items() if comps[t.component_ref.name].HasField("executor_label")
    }
    run.cached = sorted(top - set(run.output_parameters))  # top-level tasks: not in a loop or condition
    return run
