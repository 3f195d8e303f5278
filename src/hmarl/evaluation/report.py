"""One self-contained HTML report (charts as base64 PNGs, no external assets) and a Markdown summary.

The walk-forward / stage5 / gate steps fill an :class:`EvaluationResult` with plain numbers; this module
only draws and formats. Every section is optional: a section without data says so instead of failing.

    write_report("reports/report.html", result)
    Path("reports/summary.md").write_text(render_markdown(result))   # KFP Markdown artifact
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmarl.evaluation.metrics import METRIC_NAMES, drawdown, performance_metrics
from hmarl.io import write_text

SUMMARY_METRICS = tuple(name for name in METRIC_NAMES if name != "num_bars")


@dataclass
class EvaluationResult:
    title: str
    bars_per_year: float
    equity: dict[str, Sequence[float]]  # name -> equity path (T + 1,): the policy and every baseline
    policy: str = "policy"  # which equity entry is the evaluated policy
    dates: Sequence[str] | None = None  # labels of the T + 1 points (first/last shown); None: bar index
    metrics: dict[str, dict[str, float]] | None = None  # name -> metric -> value; None: from ``equity``
    action_mix: dict[str, Sequence[float]] = field(default_factory=dict)  # action -> share per step
    entropy: dict[str, tuple[Sequence[float], Sequence[float]]] = field(
        default_factory=dict
    )  # (steps, values)
    reward_contributions: dict[str, float] = field(default_factory=dict)  # component -> weighted contribution
    symbol_sharpes: dict[str, float] = field(default_factory=dict)  # symbol -> walk-forward Sharpe
    folds: list[dict] = field(default_factory=list)  # one row per fold
    cost_stress: list[dict] = field(default_factory=list)  # one row per cost level (and name)
    stress_windows: list[dict] = field(default_factory=list)  # named market windows, covered or not
    seeds: list[dict] = field(default_factory=list)  # cross-seed telemetry rows (SeedDiff.rows())
    overfitting: dict[str, float] = field(default_factory=dict)  # deflated Sharpe, PBO, trials ...
    gate: dict | None = None  # Verdict.to_dict()
    notes: list[str] = field(default_factory=list)
    value: list[dict] = field(default_factory=list)  # policy vs buy-and-hold and the passive rules
    risk_free: str = "constant 0 a year"  # the rate of every excess-return Sharpe (env.cash_rate)
    benchmark: str = "present"  # "absent (...)" when the data has no benchmark
    exposure: list[dict] = field(default_factory=list)  # where the capital goes (evaluation/exposure.py)


def summary_metrics(result: EvaluationResult) -> dict[str, dict[str, float]]:
    if result.metrics is not None:
        return result.metrics
    return {
        name: performance_metrics(np.asarray(v, dtype=np.float64), result.bars_per_year)
        for name, v in result.equity.items()
    }


def action_shares_over_time(executed, names: Sequence[str], window: int = 1) -> dict[str, np.ndarray]:
    """Share of each action among the executed actions ``(T, ...)`` (ids index ``names``) at every step,
    pooled over the trailing axes (accounts, symbols) and the last ``window`` steps (the action-mix chart)."""
    a = np.asarray(executed).reshape(len(executed), -1).astype(np.int64)
    counts = np.stack([(a == i).sum(1) for i in range(len(names))], axis=1).astype(np.float64)  # (T, A)
    csum = np.cumsum(np.vstack([np.zeros((1, len(names))), counts]), axis=0)
    lo = np.maximum(np.arange(1, a.shape[0] + 1) - window, 0)
    pooled = csum[1:] - csum[lo]
    shares = pooled / np.maximum(pooled.sum(1, keepdims=True), 1.0)
    return {name: shares[:, i] for i, name in enumerate(names)}


# --------------------------------------------------------------------------- formatting
def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | np.floating | np.integer):
        x = float(value)
        if math.isnan(x):
            return "n/a"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(value)


def _columns(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _html_table(rows: Sequence[Mapping], row_class=None) -> str:
    if not rows:
        return "<p class='empty'>not available</p>"
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cls = f" class='{row_class(r)}'" if row_class else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_table(rows: Sequence[Mapping]) -> str:
    if not rows:
        return "_not available_\n"
    cols = _columns(rows)
    cell = lambda v: _fmt(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _metric_rows(result: EvaluationResult) -> list[dict]:
    return [
        {"name": n + (" (policy)" if n == result.policy else ""), **{k: m.get(k) for k in SUMMARY_METRICS}}
        for n, m in summary_metrics(result).items()
    ]


VALUE_TEXT = (
    "Value tier: the policy must beat equal-weight buy-and-hold of the same symbols on the same test bars, "
    "net of costs, in a way cash cannot fake: its excess-return Sharpe above buy-and-hold's by a margin, "
    "its excess returns scaled to buy-and-hold's volatility earning more than buy-and-hold, and its own "
    "annual return above the risk-free path by a threshold (cash earns exactly the rate, so it adds "
    "nothing in excess of it). Volatility-targeted and trend-filtered equal weight are shown for scale."
)
EXPOSURE_TEXT = (
    "Per period and arm, means over bars: exposure = slot_use x (open limit x cap x risk) x sizing; ceiling "
    "= what the directive allows (capped at 1), slot_use = held symbols / open limit, sizing = position "
    "value / allowed allocation; pick_* = the agents' picks, masked / forced_hold = picks the masks or the "
    "repetition limit turned into HOLD, buy_scale = share of buy notional cash allowed, holding_bars = "
    "mean position length, rebalance_turnover = the master's rebalance trades per bar / equity "
    "(evaluation/exposure.py)."
)


def _basis(result: EvaluationResult) -> str:
    """What every ratio of the report is measured against."""
    return (
        f"Risk-free rate: {result.risk_free} (idle cash earned it; Sharpe, Sortino and deflated Sharpe are "
        f"in excess of it). Benchmark: {result.benchmark}."
    )


def _gate_rows(gate: Mapping) -> list[dict]:
    return [
        {
            "criterion": n,
            "tier": c["tier"],
            "blocking": c["blocking"],
            "value": c["value"],
            "rule": f"{c['op']} {_fmt(c['threshold'])}",
            "result": "pass" if c["passed"] else "FAIL",
            "note": c.get("problem", ""),
        }
        for n, c in gate["criteria"].items()
    ]


# --------------------------------------------------------------------------- charts
def _figure(width: float = 8.0, height: float = 3.4):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas on savefig

    fig = Figure(figsize=(width, height), dpi=90)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"


def _x_labels(ax, result: EvaluationResult, n: int) -> None:
    if result.dates is not None and len(result.dates) == n and n > 1:
        ax.set_xticks([0, n - 1], [str(result.dates[0]), str(result.dates[-1])])
    else:
        ax.set_xlabel("bar")


def _equity_chart(result: EvaluationResult) -> str:
    fig, ax = _figure()
    for name, v in result.equity.items():
        v = np.asarray(v, dtype=np.float64)
        ax.plot(v / v[0], lw=2.2 if name == result.policy else 1.0, label=name)
    _x_labels(ax, result, max(len(v) for v in result.equity.values()))
    ax.set_ylabel("equity (start = 1)")
    ax.legend(fontsize=7)
    return _png(fig)


def _drawdown_chart(result: EvaluationResult) -> str:
    fig, ax = _figure()
    for name, v in result.equity.items():
        ax.plot(
            -drawdown(np.asarray(v, dtype=np.float64)), lw=2.0 if name == result.policy else 1.0, label=name
        )
    _x_labels(ax, result, max(len(v) for v in result.equity.values()))
    ax.set_ylabel("drawdown")
    ax.legend(fontsize=7)
    return _png(fig)


def _action_chart(mix: Mapping[str, Sequence[float]]) -> str:
    fig, ax = _figure()
    ax.stackplot(
        np.arange(len(next(iter(mix.values())))),
        *[np.asarray(v, float) for v in mix.values()],
        labels=list(mix),
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of executed actions")
    ax.legend(fontsize=7, loc="upper left", ncol=4)
    return _png(fig)


def _entropy_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> str:
    fig, ax = _figure()
    for name, (x, y) in curves.items():
        ax.plot(np.asarray(x, float), np.asarray(y, float), label=name)
    ax.set_xlabel("env step")
    ax.set_ylabel("entropy (nats)")
    ax.legend(fontsize=7)
    return _png(fig)


def _bar_chart(values: Mapping[str, float], ylabel: str) -> str:
    fig, ax = _figure()
    ax.bar(list(values), [float(v) for v in values.values()])
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _png(fig)


def _histogram(values: Sequence[float], threshold: float | None) -> str:
    fig, ax = _figure()
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    ax.hist(v, bins=min(30, max(5, v.size // 3)))
    if threshold is not None:
        ax.axvline(threshold, color="red", ls="--", label=f"gate {threshold:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("walk-forward Sharpe per symbol")
    ax.set_ylabel("symbols")
    return _png(fig)


# --------------------------------------------------------------------------- documents
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}th{background:#eee}
tr.fail td{background:#fdd}tr.pass td{background:#dfd}.go{color:#070}.no-go{color:#b00}.empty{color:#888}"""


def render_html(result: EvaluationResult) -> str:
    gate = result.gate
    sections: list[tuple[str, str]] = []
    if gate is not None:
        fail_rows = lambda r: "pass" if r["result"] == "pass" else "fail"  # noqa: E731
        sections.append(
            (
                "Gate",
                f"<p class='{gate['decision']}'><b>{html.escape(gate['decision'].upper())}</b> "
                f"(blocking tiers: {html.escape(', '.join(gate['blocking_tiers']))})</p>"
                + _html_table(_gate_rows(gate), fail_rows),
            )
        )
    sections.append(("Metrics", f"<p>{html.escape(_basis(result))}</p>" + _html_table(_metric_rows(result))))
    sections.append(
        ("Value vs passive investing", f"<p>{html.escape(VALUE_TEXT)}</p>" + _html_table(result.value))
    )
    if result.overfitting:
        sections.append(("Overfitting", _html_table([result.overfitting])))
    sections.append(
        ("Equity", _equity_chart(result) if result.equity else "<p class='empty'>not available</p>")
    )
    sections.append(
        ("Drawdowns", _drawdown_chart(result) if result.equity else "<p class='empty'>not available</p>")
    )
    sections.append(
        (
            "Action mix over time",
            _action_chart(result.action_mix) if result.action_mix else "<p class='empty'>not available</p>",
        )
    )
    sections.append(
        (
            "Entropy",
            _entropy_chart(result.entropy) if result.entropy else "<p class='empty'>not available</p>",
        )
    )
    sections.append(
        (
            "Reward component contributions",
            _bar_chart(result.reward_contributions, "contribution")
            if result.reward_contributions
            else "<p class='empty'>not available</p>",
        )
    )
    threshold = None
    if gate is not None and "symbol_walk_forward_sharpe" in gate["criteria"]:
        threshold = float(gate["criteria"]["symbol_walk_forward_sharpe"]["threshold"])
    sections.append(
        (
            "Per-symbol Sharpe",
            _histogram(list(result.symbol_sharpes.values()), threshold)
            if result.symbol_sharpes
            else "<p class='empty'>not available</p>",
        )
    )
    sections.append(("Folds", _html_table(result.folds)))
    sections.append(("Cost stress", _html_table(result.cost_stress)))
    sections.append(("Stress windows", _html_table(result.stress_windows)))
    if result.exposure:
        text = f"<p>{html.escape(EXPOSURE_TEXT)}</p>"
        sections.append(("Where the capital goes", text + _html_table(result.exposure)))
    if result.seeds:
        sections.append(("Cross-seed telemetry", _html_table(result.seeds)))
    if result.notes:
        sections.append(
            ("Notes", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
        )
    body = "".join(f"<h2>{html.escape(t)}</h2>{content}" for t, content in sections)
    title = html.escape(result.title)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style>"
        f"</head><body><h1>{title}</h1>{body}</body></html>\n"
    )


def render_markdown(result: EvaluationResult) -> str:
    """The numbers of the report as Markdown (KFP Markdown artifact, PR comments)."""
    parts = [f"# {result.title}\n"]
    if result.gate is not None:
        g = result.gate
        failing = ", ".join(g["failing"]) or "none"
        parts.append(f"**Gate: {g['decision'].upper()}** (blocking failures: {failing})\n")
        parts.append(_md_table(_gate_rows(g)))
    parts.append("## Metrics\n")
    parts.append(_basis(result) + "\n")
    parts.append(_md_table(_metric_rows(result)))
    if result.value:
        parts += ["## Value vs passive investing\n", VALUE_TEXT + "\n", _md_table(result.value)]
    if result.overfitting:
        parts += ["## Overfitting\n", _md_table([result.overfitting])]
    parts += ["## Folds\n", _md_table(result.folds), "## Cost stress\n", _md_table(result.cost_stress)]
    parts += ["## Stress windows\n", _md_table(result.stress_windows)]
    if result.exposure:
        parts += ["## Where the capital goes\n", EXPOSURE_TEXT + "\n", _md_table(result.exposure)]
    if result.seeds:
        parts += ["## Cross-seed telemetry\n", _md_table(result.seeds)]
    return "\n".join(parts)


def write_report(path: str | Path, result: EvaluationResult) -> None:
    """The HTML report, written atomically."""
    write_text(path, render_html(result))
