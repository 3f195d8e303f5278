"""Running the suite's rules with Great Expectations 1.x: one suite + checkpoint per frame, results mapped
back to :class:`~hmarl.data.validation_report.CheckResult` with example rows.

Great Expectations costs 3-5 s to import, so it is imported only inside :func:`run_rules`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from hmarl.data.expectation_rules import Rule
from hmarl.data.validation_report import TABLES, CheckResult, example_row, plain

MAX_EXAMPLES = 5  # example rows kept per check (the outlier list is always complete)


def _context(gx: Any) -> Any:
    """An in-memory context: no files, no analytics calls, no progress bars in the step's log."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _exception_text(result: Any) -> str | None:
    info = result.exception_info or {}
    for item in [info] if "raised_exception" in info else list(info.values()):
        if isinstance(item, dict) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _to_check(rule: Rule, result: Any, frame: pd.DataFrame) -> CheckResult:
    res = result.result or {}
    check = CheckResult(
        rule.name, rule.table, rule.target, rule.description, bool(result.success), "great_expectations"
    )
    error = _exception_text(result)
    if error is not None:
        check.success, check.problem = False, f"the expectation raised: {error}"
        return check
    if "unexpected_count" not in res:  # a table-level expectation: one observed value
        check.observed = str(plain(res.get("observed_value")))
        check.problem = "" if check.success else rule.problem.format(observed=check.observed)
        return check
    unit = TABLES[rule.table].unit
    count = int(res["unexpected_count"])
    total = int(res.get("element_count") or 0) - int(res.get("missing_count") or 0)
    check.unexpected_count = count
    check.rows = [int(i) for i in res.get("unexpected_index_list") or []]
    check.examples = [example_row(frame, rule.table, i, rule.show) for i in check.rows[:MAX_EXAMPLES]]
    check.observed = f"{count:,} of {total:,} {unit}"
    check.problem = "" if check.success else f"{count:,} {unit[:-1] if count == 1 else unit} {rule.problem}"
    if "mostly" in rule.kwargs:  # a tolerated fraction: say how close to it we are
        fractions = f"{count / max(total, 1):.4%}, allowed {1.0 - rule.kwargs['mostly']:.4%}"
        check.observed += f" ({fractions})"
        check.problem += f" ({fractions})" if check.problem else ""
    return check


def run_rules(rules: list[Rule], tables: dict[str, pd.DataFrame]) -> tuple[list[CheckResult], float]:
    """Run the rules as one GE suite + checkpoint per frame; returns the checks and the GE import time."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are noise in our log
    t0 = time.perf_counter()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    import_seconds = time.perf_counter() - t0
    ctx = _context(gx)
    source = ctx.data_sources.add_pandas("canonical")
    results: dict[str, Any] = {}
    for table in dict.fromkeys(r.table for r in rules):
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"canonical_{table}"))
        for rule in (r for r in rules if r.table == table):
            meta = {"check": rule.check_id}  # GE returns results out of order: map them back by this
            suite.add_expectation(
                getattr(gxe, rule.expectation)(**rule.kwargs, description=rule.description, meta=meta)
            )
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"canonical_{table}", data=batch, suite=suite)
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"canonical_{table}",
                validation_definitions=[definition],
                result_format={"result_format": "COMPLETE"},
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for suite_result in run.run_results.values():
            for r in suite_result.results:
                results[r.expectation_config.meta["check"]] = r
    checks = [_to_check(rule, results[rule.check_id], tables[rule.table]) for rule in rules]
    return checks, import_seconds
