"""Runs one step with all-or-nothing outputs.

Each output is written under a temp name and only when ``run`` returns are they renamed into place,
replacing the previous outputs: a failed step writes nothing downstream and leaves the previous complete
outputs (and their metrics) as they were. Temp folders a killed run left beside its outputs
(``.<name>.tmp-*``) are removed when the step runs again.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from types import ModuleType

from hmarl.config import HmarlConfig
from hmarl.errors import StepError
from hmarl.io import remove_leftovers, remove_path, replace_path, temp_sibling, write_json
from hmarl.steps import STEP_NAMES

log = logging.getLogger(__name__)


class StepOutputs(dict):
    """The temp paths a step writes; ``final`` maps them to where they land on success
    (for side files such as a failure report, which must not sit inside an output)."""

    def __init__(self, temps: dict[str, Path], final: dict[str, Path]):
        super().__init__(temps)
        self.final = final


def final_paths(outputs: dict[str, Path]) -> dict[str, Path]:
    """Where ``outputs`` land: the runner's final paths, or the paths themselves."""
    return getattr(outputs, "final", outputs)


def step_module(name: str) -> ModuleType:
    if name not in STEP_NAMES:
        raise StepError(f"unknown step {name!r} (known: {', '.join(STEP_NAMES)})")
    return importlib.import_module(f"hmarl.steps.{name}")


def _resolve(kind: str, defaults: dict[str, str], given: dict[str, str] | None) -> dict[str, Path]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise StepError(f"unknown {kind} {unknown} (known: {sorted(defaults)})")
    return {k: Path(given.get(k, v)) for k, v in defaults.items()}


def execute(
    name: str,
    cfg: HmarlConfig,
    inputs: dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
    metrics_path: str | Path | None = None,
) -> dict[str, float]:
    mod = step_module(name)
    ins = _resolve("inputs", mod.INPUTS, inputs)
    outs = _resolve("outputs", mod.OUTPUTS, outputs)
    for key, path in ins.items():
        if not path.exists():
            raise StepError(f"step {name}: input {key!r} not found at {path}")
    for path in [*outs.values(), *([Path(metrics_path)] if metrics_path is not None else [])]:
        for leftover in remove_leftovers(path):
            log.warning("step %s: removed %s (left by a killed run)", name, leftover)
    temps = StepOutputs({k: temp_sibling(p) for k, p in outs.items()}, outs)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        metrics = mod.run(cfg, ins, temps)
        for key, tmp in temps.items():
            if not tmp.exists():
                raise StepError(f"step {name}: output {key!r} was not produced")
        for key, tmp in temps.items():
            replace_path(tmp, outs[key])
    finally:
        for tmp in temps.values():
            remove_path(tmp)
    metrics = dict(metrics or {})
    # CPU seconds next to wall seconds: on a shared machine the wall time says little about the step
    log.info("step %s done in %.2fs (%.2fs CPU)", name, time.perf_counter() - t0, time.process_time() - cpu0)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics
