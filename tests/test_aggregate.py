"""Walk-forward aggregation: folds chained into one path, stress windows only when covered, per-symbol
Sharpe, overfitting statistics, and the evaluation files (metrics.json, report)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval_fixtures import BPY, make_folds, make_period
from hmarl.config import ConfigError, build_config
from hmarl.errors import DataError
from hmarl.evaluation.aggregate import aggregate, write_evaluation
from hmarl.evaluation.period import BASELINES, POLICY

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return build_config(raw, ["tracking.enabled=false", *overrides])


def _strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path.name}: non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_concatenated_metrics_are_those_of_the_chained_path():
    folds = make_folds(3, 120)
    agg = aggregate(list(reversed(folds)), _cfg())  # order of the list does not matter: bar order does
    assert agg.labels == ["fold_0", "fold_1", "fold_2"]
    assert len(agg.dates) == 3 * 120 + 1 and agg.dates[0] == folds[0].dates[0]
    for name in (POLICY, *BASELINES):
        # the chain, written out: compound every bar return of every fold, in order
        r = np.concatenate([np.diff(f.base[name].equity) / f.base[name].equity[:-1] for f in folds])
        cost_share = np.concatenate([f.base[name].costs / f.base[name].equity[:-1] for f in folds])
        path = np.cumprod(np.r_[1.0, 1.0 + r])
        m = agg.metrics[name]
        assert m["total_return"] == pytest.approx(path[-1] - 1, rel=1e-9)
        assert m["annual_return"] == pytest.approx(path[-1] ** (BPY / r.size) - 1, rel=1e-9)
        assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(BPY), rel=1e-9)
        assert m["max_drawdown"] == pytest.approx(
            max(1 - v / path[: i + 1].max() for i, v in enumerate(path))
        )
        assert m["costs_paid"] == pytest.approx(float((cost_share * path[:-1]).sum()), rel=1e-9)
        turnover = np.concatenate([f.base[name].turnover for f in folds])
        assert m["turnover"] == pytest.approx(turnover.mean() * BPY, rel=1e-9)
        assert m["num_bars"] == 360
    # the fold table holds each fold's own numbers
    for f in folds:
        assert agg.per_period[f.label][POLICY]["sharpe"] == pytest.approx(f.metrics()[POLICY]["sharpe"])
    assert [row["period"] for row in agg.fold_rows()] == agg.labels


def test_cost_stress_covers_every_level_and_name_and_costs_hurt():
    agg = aggregate(make_folds(2, 100), _cfg())
    stress = agg.cost_stress()
    assert sorted(stress) == [0.0, 15.0, 30.0, 50.0]
    for by_name in stress.values():
        assert set(by_name) == {POLICY, *BASELINES}
    policy = [stress[c][POLICY]["total_return"] for c in (0.0, 15.0, 30.0, 50.0)]
    assert policy == sorted(policy, reverse=True) and policy[0] > policy[-1]
    assert stress[0.0][POLICY]["costs_paid"] == 0.0 and stress[50.0][POLICY]["costs_paid"] > 0
    assert len(agg.cost_stress_rows()) == 4 * (1 + len(BASELINES))


def test_stress_windows_only_when_the_dates_cover_them():
    folds = make_folds(3, 120, start="2019-11-01")  # 2019-11-01 .. ~2020-11
    cfg = _cfg()
    agg = aggregate(folds, cfg)
    rows = {(r["window"], r.get("name")): r for r in agg.stress_windows}
    assert rows[("gfc_2008", None)]["status"].startswith("not covered")
    covid = {n: r for (w, n), r in rows.items() if w == "covid_2020"}
    assert set(covid) == {POLICY, *BASELINES}
    # the window's return, written out: the points dated inside it plus the bar leading into it
    days = [d[:10] for d in agg.dates]
    inside = [i for i, d in enumerate(days) if "2020-02-19" <= d <= "2020-04-30"]
    eq = agg.equity[POLICY][inside[0] - 1 : inside[-1] + 1]
    assert covid[POLICY]["status"] == "covered"
    assert covid[POLICY]["total_return"] == pytest.approx(eq[-1] / eq[0] - 1)
    # a window only partly inside the data is evaluated on the covered part, which the row names
    partial = aggregate(folds, _cfg("walk_forward.stress_windows={late: ['2020-10-01', '2021-06-30']}"))
    last = agg.dates[-1][:10]
    assert {r["name"] for r in partial.stress_windows} == {POLICY, *BASELINES}
    row = next(r for r in partial.stress_windows if r["name"] == POLICY)
    assert row["covered_from"] == "2020-10-01" and row["covered_to"] == last
    share = np.busday_count("2020-10-01", np.datetime64(last) + 1) / np.busday_count(
        "2020-10-01", "2021-07-01"
    )
    assert 0 < row["coverage"] < 1 and row["coverage"] == pytest.approx(share)
    assert row["status"] == f"partial (2020-10-01 .. {last}, {share:.0%} of the window)"
    start = next(i for i, d in enumerate(agg.dates) if d[:10] >= "2020-10-01")
    eq = agg.equity[POLICY][start - 1 :]
    assert row["total_return"] == pytest.approx(eq[-1] / eq[0] - 1)
    # a window the data does not reach at all is not covered
    none = aggregate(folds, _cfg("walk_forward.stress_windows={later: ['2022-01-01', '2022-06-30']}"))
    assert [r["status"][:11] for r in none.stress_windows] == ["not covered"]
    with pytest.raises(ConfigError, match=r"walk_forward.stress_windows.bad"):
        aggregate(folds, _cfg("walk_forward.stress_windows={bad: ['2020-13-01', '2020-12-31']}"))


def test_per_symbol_sharpe_of_the_policy():
    folds = make_folds(2, 150, symbols=6)
    agg = aggregate(folds, _cfg())
    r = np.concatenate([f.symbol_returns for f in folds])
    expected = r.mean(0) / r.std(0, ddof=1) * math.sqrt(BPY)
    assert list(agg.symbol_sharpes) == [f"S{i}" for i in range(6)]
    assert np.allclose(list(agg.symbol_sharpes.values()), expected)
    # the fixture gives later symbols more of the edge: the best symbol beats the worst
    assert agg.symbol_sharpes["S5"] > agg.symbol_sharpes["S0"]


def test_deflated_sharpe_and_pbo_separate_an_edge_from_noise():
    cfg = _cfg()
    edge = aggregate(make_folds(3, 200), cfg)
    noise = aggregate(make_folds(3, 200, edge={POLICY: 0.0, "symbol_agents": 0.0}), cfg)
    for agg in (edge, noise):
        o = agg.overfitting
        assert o["trials_source"] == "in-run" and o["dsr_n_trials"] == 1 + len(BASELINES) - 1
        assert 0.0 <= o["pbo"] <= 1.0 and 0.0 <= o["deflated_sharpe"] <= 1.0
        assert agg.metrics[POLICY]["deflated_sharpe"] == o["deflated_sharpe"]
        assert agg.metrics[POLICY]["pbo"] == o["pbo"]
    assert edge.overfitting["deflated_sharpe"] > 0.8 and noise.overfitting["deflated_sharpe"] < 0.5
    # strategies with an edge among noise: the in-sample best rarely lands below the median out of sample;
    # among pure noise, selection is luck
    assert edge.overfitting["pbo"] < 0.1 and noise.overfitting["pbo"] > 0.25
    # given trials (MLflow): their number and spread set the bar
    many = aggregate(make_folds(3, 200), cfg, trial_sharpes=np.linspace(-1, 3, 50))
    assert many.overfitting["trials_source"] == "mlflow" and many.overfitting["dsr_n_trials"] == 50
    assert many.overfitting["dsr_sharpe_threshold"] > edge.overfitting["dsr_sharpe_threshold"]


def test_pbo_degrades_to_nan_with_a_note_when_bars_are_too_few():
    agg = aggregate([make_period("tiny", 0, 12, "2021-01-04", 1)], _cfg("walk_forward.pbo_splits=8"))
    assert math.isnan(agg.overfitting["pbo"]) and math.isfinite(agg.overfitting["deflated_sharpe"])
    assert any("PBO not computed" in n and "pbo_splits=8" in n for n in agg.notes)


def test_inconsistent_periods_are_rejected():
    a, b = make_folds(2, 50)
    with pytest.raises(DataError, match="overlap"):
        aggregate([a, make_period("again", a.bars[0] + 10, 50, "2020-01-01", 3)], _cfg())
    with pytest.raises(DataError, match="bars_per_year"):
        aggregate([a, make_period("hourly", b.bars[0], 50, "2020-01-01", 3, bpy=1638.0)], _cfg())
    with pytest.raises(DataError, match="no evaluated period"):
        aggregate([], _cfg())


def test_write_evaluation_files(tmp_path):
    agg = aggregate([make_period("tiny", 0, 12, "2021-01-04", 1)], _cfg())  # PBO is NaN here
    doc = write_evaluation(tmp_path, agg, "Evaluation of <tiny>")
    metrics = _strict_json(tmp_path / "metrics.json")
    for name in (POLICY, *BASELINES):
        for key in ("total_return", "annual_return", "sharpe", "max_drawdown", "turnover", "costs_paid"):
            assert metrics[name][key] == pytest.approx(agg.metrics[name][key]), (name, key)
    assert metrics[POLICY]["pbo"] is None and math.isnan(doc[POLICY]["pbo"])
    assert metrics[POLICY]["deflated_sharpe"] == pytest.approx(agg.overfitting["deflated_sharpe"])
    tables = _strict_json(tmp_path / "evaluation.json")
    assert tables["periods"] == ["tiny"] and set(tables["symbol_sharpes"]) == set(agg.symbols)
    html = (tmp_path / "report.html").read_text()
    assert "Evaluation of &lt;tiny&gt;" in html and not re.search(r"https?://", html)
    md = (tmp_path / "report.md").read_text()
    assert "## Cost stress" in md and "## Stress windows" in md and "not covered" in md
