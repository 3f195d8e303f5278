"""The HTML report is self-contained, shows every section, and its numbers are the metrics'."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from eval_fixtures import REPORT_SECTIONS
from hmarl.evaluation.gate import evaluate_gate
from hmarl.evaluation.metrics import performance_metrics
from hmarl.evaluation.params import GateConfig
from hmarl.evaluation.report import (
    SUMMARY_METRICS,
    EvaluationResult,
    render_html,
    render_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(**kw) -> EvaluationResult:
    rng = np.random.default_rng(0)
    paths = {
        name: 1e6 * np.cumprod(np.r_[1.0, 1 + rng.normal(mu, 0.01, 250)])
        for name, mu in (("policy", 0.001), ("buy_hold", 0.0005), ("random<masked>", 0.0))
    }
    cfg = GateConfig()
    values = {n: c.threshold + (1 if c.op in (">", ">=") else -1) for n, c in cfg.criteria.items()}
    values["master_drawdown_reduction"] = float("nan")
    steps = np.arange(0, 6400, 128)
    defaults = dict(
        title="Walk-forward evaluation",
        bars_per_year=252.0,
        equity=paths,
        dates=[f"2020-01-{i % 28 + 1:02d}" for i in range(251)],
        action_mix={"HOLD": np.full(50, 0.6), "BUY_SMALL": np.full(50, 0.25), "SELL_ALL": np.full(50, 0.15)},
        entropy={
            "policy": (steps, np.linspace(1.5, 0.4, steps.size)),
            "executed": (steps, np.linspace(1.2, 0.3, steps.size)),
        },
        reward_contributions={"pnl": 0.02, "cost": -0.004, "diversity_bonus": 0.007},
        symbol_sharpes={f"S{i}": float(x) for i, x in enumerate(rng.normal(0.7, 0.3, 40))},
        folds=[
            {"fold": 0, "sharpe": 0.81, "max_drawdown": 0.12},
            {"fold": 1, "sharpe": 0.55, "max_drawdown": 0.2},
        ],
        cost_stress=[{"bps": b, "sharpe": 1.0 - b / 100} for b in (0, 15, 30, 50)],
        seeds=[{"metric": "policy_action_entropy_mean", "mean": 0.4, "std": 0.05, "seed 42": 0.35}],
        overfitting={"deflated_sharpe": 0.93, "pbo": 0.12, "n_trials": 17},
        gate=evaluate_gate(values, cfg).to_dict(),
        notes=["synthetic <planted_alpha> data"],
        value=[
            {"name": "policy", "sharpe (excess)": 1.4, "annual_return at buy_hold vol": 0.21},
            {"name": "buy_hold", "sharpe (excess)": 0.4, "annual_return at buy_hold vol": 0.08},
        ],
        risk_free="constant 0.02 a year",
        benchmark="absent (the data has no benchmark)",
    )
    defaults.update(kw)
    return EvaluationResult(**defaults)


def test_report_is_self_contained_with_every_chart(tmp_path):
    result = _result()
    path = tmp_path / "report.html"
    write_report(path, result)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # no external assets of any kind
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", text)
    assert "<script" not in text and "<link" not in text and "http" not in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 6  # equity, drawdowns, action mix, entropy, reward contributions, Sharpe histogram
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)
    for heading in REPORT_SECTIONS:
        assert f"<h2>{heading}</h2>" in text, heading
    # names are escaped, not injected
    assert "random&lt;masked&gt;" in text and "<masked>" not in text and "&lt;planted_alpha&gt;" in text


def test_report_numbers_are_the_metrics_and_the_gate():
    result = _result()
    text = render_html(result)
    m = performance_metrics(np.asarray(result.equity["policy"]), 252.0)
    row = re.search(r"<tr><td>policy \(policy\)</td>(.*?)</tr>", text).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    col = {name: i for i, name in enumerate(SUMMARY_METRICS)}
    assert (
        cells[col["sharpe"]] == f"{m['sharpe']:.4g}"
        and cells[col["max_drawdown"]] == f"{m['max_drawdown']:.4g}"
    )
    assert "NO-GO" in text  # master_drawdown_reduction was NaN: fails closed
    gate_row = re.search(r"<tr class='fail'><td>master_drawdown_reduction</td>(.*?)</tr>", text)
    assert gate_row and "n/a" in gate_row.group(1) and "FAIL" in gate_row.group(1)
    assert text.count("<tr class='pass'>") == len(result.gate["criteria"]) - 1


def test_missing_sections_say_so():
    text = render_html(
        _result(
            action_mix={},
            entropy={},
            reward_contributions={},
            symbol_sharpes={},
            folds=[],
            cost_stress=[],
            seeds=[],
            overfitting={},
            gate=None,
            notes=[],
            value=[],
        )
    )
    assert text.count("src='data:image/png") == 2  # only equity and drawdowns
    assert text.count("not available") == 8 and "<h2>Gate</h2>" not in text  # + stress windows, value


def test_markdown_summary():
    md = render_markdown(_result())
    assert md.startswith("# Walk-forward evaluation")
    assert "**Gate: NO-GO** (blocking failures: master_drawdown_reduction)" in md
    assert "| fold | sharpe | max_drawdown |" in md and "| 1 | 0.55 | 0.2 |" in md
    assert "| bps | sharpe |" in md and "| 50 | 0.5 |" in md
    assert "random<masked>" in md
    # the basis of every ratio, and the value table
    assert (
        "Risk-free rate: constant 0.02 a year" in md and "Benchmark: absent (the data has no benchmark)" in md
    )
    assert "## Value vs passive investing" in md and "| policy | 1.4 | 0.21 |" in md


def test_given_metrics_are_used_as_is():
    metrics = {"policy": {"sharpe": 1.234, "total_return": 0.5}}
    md = render_markdown(_result(metrics=metrics))
    assert "| policy (policy) | 0.5 |" in md and "1.234" in md


@pytest.fixture(autouse=True)
def _no_pyplot_state():
    """Drawing must not go through pyplot (global figures leak memory in long runs)."""
    import sys

    yield
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


def test_action_shares_over_time_against_a_loop():
    from hmarl.evaluation.report import action_shares_over_time

    names = ("HOLD", "BUY", "SELL")
    executed = np.random.default_rng(1).integers(0, 3, (30, 4, 5))
    shares = action_shares_over_time(executed, names, window=7)
    for t in range(30):
        pooled = executed[max(0, t - 6) : t + 1].reshape(-1).tolist()
        for i, name in enumerate(names):
            assert shares[name][t] == pytest.approx(pooled.count(i) / len(pooled))
