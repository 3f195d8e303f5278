"""Validate the canonical dataset with a Great Expectations suite; bad data stops the pipeline.

On success the report (``report.html`` + ``summary.json``) is the step's output. On failure a
:class:`DataError` names every failed expectation with example rows; the runner then leaves no
output, and the report for humans goes to the sibling ``<report>.failed/`` instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.data.expectations import validate_canonical
from hmarl.data.validation_report import write_report
from hmarl.errors import DataError
from hmarl.io import atomic_path, remove_path
from hmarl.steps.runner import final_paths

INPUTS = {"canonical": "data/canonical"}
OUTPUTS = {"report": "reports/validate"}
PARAMS = ("validation",)


def failed_report_dir(report: str | Path) -> Path:
    """``<report>.failed``: beside the real output, outside it, so the runner never removes it."""
    report = Path(report)
    return report.parent / f"{report.name}.failed"


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    t0 = time.perf_counter()
    failed_dir = failed_report_dir(final_paths(outputs)["report"])
    outcome = validate_canonical(inputs["canonical"], cfg.validation)
    if not outcome.success:
        with atomic_path(failed_dir) as tmp:
            write_report(outcome, tmp)
        lines = [c.message() for c in outcome.failed]
        raise DataError(
            f"validation of {inputs['canonical']} failed: {len(lines)} of {len(outcome.checks)} "
            f"expectations failed (report: {failed_dir / 'report.html'})\n  - " + "\n  - ".join(lines)
        )
    write_report(outcome, outputs["report"])
    remove_path(failed_dir)  # a stale failure report would contradict this run
    return {
        "expectations_total": float(len(outcome.checks)),
        "expectations_failed": 0.0,
        "outliers": float(len(outcome.outliers)),
        "rows": float(outcome.rows),
        "symbols": float(outcome.symbols),
        "seconds": time.perf_counter() - t0 - outcome.ge_import_seconds,
        "ge_import_seconds": outcome.ge_import_seconds,
        "success": 1.0,
    }
