"""Validation results and their report: ``summary.json`` for machines, ``report.html`` for humans.

:class:`CheckResult` is one expectation's outcome in words a human can act on ("prices_positive
(close): 3 rows with close <= 0, e.g. symbol=AAA timestamp=2020-01-03 close=0.0 (row 17)").
Both report files are deterministic for the same data and params (no clock times), so DVC sees an
unchanged output when nothing changed.
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmarl.io import write_json, write_text

MAX_OUTLIERS_SHOWN = 200  # in the HTML table; summary.json always has the full list


@dataclass(frozen=True)
class Table:
    """How the rows of one validated frame are named in messages."""

    file: str  # what a human should open
    keys: tuple[str, ...]  # columns that identify a row
    unit: str  # plural noun for counts
    index_label: str | None  # "row 17" / "calendar_bar 17"; None where the position means nothing


TABLES = {
    "bars": Table("bars.parquet", ("symbol", "timestamp"), "rows", "row"),
    "benchmark": Table("benchmark.parquet", ("timestamp",), "benchmark rows", "row"),
    "exogenous": Table("exogenous.parquet", ("timestamp",), "exogenous rows", "row"),
    "symbols": Table("bars.parquet", ("symbol",), "symbols", None),
    "calendar": Table("bars.parquet", ("timestamp",), "calendar timestamps", "calendar_bar"),
    "meta": Table("meta.json", (), "fields", None),
}


def plain(value: Any) -> Any:
    """A JSON-friendly, readable scalar (timestamps as ISO text, dates alone when at midnight)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d") if value == value.normalize() else value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def example_row(frame: pd.DataFrame, table: str, index: int, show: tuple[str, ...]) -> dict:
    """Keys, the ``show`` columns and the row position of ``frame.loc[index]``."""
    spec = TABLES[table]
    row = frame.loc[index]
    out = {c: plain(row[c]) for c in dict.fromkeys((*spec.keys, *show)) if c in frame.columns}
    if spec.index_label:
        out[spec.index_label] = int(index)
    return out


def format_example(example: dict) -> str:
    """``symbol=AAA timestamp=2020-01-03 close=0.0 (row 17)``; helper columns lose their underscore."""
    parts, where = [], ""
    for key, value in example.items():
        if key in ("row", "calendar_bar"):
            where = f" ({key.replace('_', ' ')} {value})"
        else:
            parts.append(f"{key.lstrip('_')}={'NaN' if value is None else value}")
    return " ".join(parts) + where


@dataclass
class CheckResult:
    """One expectation's outcome."""

    name: str  # rule name, e.g. "prices_positive"
    table: str  # key of TABLES
    target: str = ""  # column or relation looked at, e.g. "close" or "high >= close"
    description: str = ""
    success: bool = True
    engine: str = "pandas"  # "great_expectations" or "pandas"
    observed: str = ""  # e.g. "3 of 600 rows"
    problem: str = ""  # set when failed: "3 rows with close <= 0"
    unexpected_count: int = 0
    examples: list[dict] = field(default_factory=list)
    rows: list[int] = field(default_factory=list, repr=False)  # every unexpected index; not serialized

    @property
    def check_id(self) -> str:
        return f"{self.name} ({self.target})" if self.target else self.name

    def message(self, max_examples: int = 3) -> str:
        shown = [format_example(e) for e in self.examples[:max_examples]]
        return f"{self.check_id}: {self.problem or self.observed}" + (
            ", e.g. " + "; ".join(shown) if shown else ""
        )

    def to_dict(self) -> dict:
        out = {"id": self.check_id, **dataclasses.asdict(self)}
        del out["rows"]
        return out


@dataclass
class Outcome:
    """Everything the report and the step need from one validation run."""

    folder: str
    checks: list[CheckResult]
    outliers: list[dict]  # every |return| beyond validation.max_abs_return: symbol, timestamp, return, row
    rows: int
    symbols: int
    calendar_bars: int
    fingerprint: str | None
    params: dict
    notes: list[str]  # checks that could not run, and why
    seconds: float  # wall time, excluding the Great Expectations import
    ge_import_seconds: float
    # calendar, benchmark (or None), forward-filled bars per series, allow-listed bad prints (data_facts)
    facts: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]


# --------------------------------------------------------------------------- rendering
def summary(outcome: Outcome) -> dict:
    failed = outcome.failed
    return {
        "status": "passed" if outcome.success else "failed",
        "folder": outcome.folder,
        "fingerprint": outcome.fingerprint,
        "rows": outcome.rows,
        "symbols": outcome.symbols,
        "calendar_bars": outcome.calendar_bars,
        "expectations_total": len(outcome.checks),
        "expectations_failed": len(failed),
        "failed": [c.check_id for c in failed],
        "outlier_count": len(outcome.outliers),
        "outliers": outcome.outliers,
        "params": outcome.params,
        "data": outcome.facts,
        "notes": outcome.notes,
        "results": [c.to_dict() for c in outcome.checks],
    }


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#176f2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.examples{font-family:monospace;font-size:12px;white-space:pre-wrap}
"""


def _row(*cells: object, tag: str = "td", first: str = "", last: str = "") -> str:
    escaped = "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells)
    return f"<tr>{first}{escaped}{last}</tr>"


def _check_row(check: CheckResult) -> str:
    status = '<td class="pass">pass</td>' if check.success else '<td class="fail">FAIL</td>'
    examples = html.escape("\n".join(format_example(e) for e in check.examples))
    cells = (check.check_id, check.description, check.engine, check.observed, check.problem)
    return _row(*cells, first=status, last=f'<td class="examples">{examples}</td>')


def _fact_rows(facts: dict) -> list[tuple[str, object]]:
    if not facts:
        return []
    filled = ", ".join(f"{k}: {v}" for k, v in facts.get("filled_bars", {}).items())
    allowed = "; ".join(
        f"{a['symbol']} {a['timestamp']} ({a['score']:.0f} sigma)" for a in facts["allowed_bad_prints"]
    )
    return [
        ("bar frequency", facts.get("freq")),
        ("exchange calendar", facts.get("calendar") or "none (the data's own calendar)"),
        ("bars per year", facts.get("bars_per_year")),
        ("benchmark", facts.get("benchmark") or "none: benchmark-relative parts are skipped"),
        (f"bars filled forward (data.max_fill_bars={facts.get('max_fill_bars')})", filled or "none"),
        ("allow-listed bad prints", allowed or "none"),
    ]


def render_html(outcome: Outcome) -> str:
    """A self-contained page: facts, every expectation (failures first), the outlier list."""
    s = summary(outcome)
    verdict = '<span class="pass">PASSED</span>' if outcome.success else '<span class="fail">FAILED</span>'
    facts = [
        ("dataset", outcome.folder),
        ("fingerprint", outcome.fingerprint),
        ("rows", f"{outcome.rows:,}"),
        ("symbols", outcome.symbols),
        ("calendar bars", outcome.calendar_bars),
        ("expectations", f"{s['expectations_total']} ({s['expectations_failed']} failed)"),
        ("return outliers", len(outcome.outliers)),
        *_fact_rows(outcome.facts),
        *((f"validation.{k}", v) for k, v in outcome.params.items()),
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>hmarl data validation</title>",
        f"<style>{_CSS}</style></head><body><h1>Data validation: {verdict}</h1><table>",
        *(_row(v, first=f"<th>{html.escape(k)}</th>") for k, v in facts),
        "</table>",
        *(f"<p>Note: {html.escape(n)}</p>" for n in outcome.notes),
        "<h2>Expectations</h2><table>",
        _row("status", "expectation", "rule", "engine", "observed", "problem", "examples", tag="th"),
        *(_check_row(c) for c in sorted(outcome.checks, key=lambda c: c.success)),  # stable: suite order
        f"</table><h2>Return outliers ({len(outcome.outliers)})</h2>",
    ]
    shown = outcome.outliers[:MAX_OUTLIERS_SHOWN]
    if len(shown) < len(outcome.outliers):
        parts.append(f"<p>The first {len(shown)} are shown; summary.json lists all.</p>")
    if shown:
        parts += ["<table>", _row("row", "symbol", "timestamp", "return", tag="th")]
        parts += [_row(o["row"], o["symbol"], o["timestamp"], f"{o['return']:+.2%}") for o in shown]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(outcome: Outcome, folder: str | Path) -> Path:
    """Write ``report.html`` and ``summary.json`` into ``folder`` (created); returns the HTML path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "summary.json", summary(outcome))
    write_text(folder / "report.html", render_html(outcome))
    return folder / "report.html"
