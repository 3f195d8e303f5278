"""The gate step end to end on fixture folders (Stage 5 seeds + walk-forward folds built directly):
go when every blocking criterion passes, no-go naming the failures, fails closed on missing values,
refuses incomplete coverage without writing anything, and writes a self-contained report + DVC plots."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval_fixtures import (
    REPORT_SECTIONS,
    make_folds,
    passing_seed_values,
    write_stage5,
    write_walk_forward,
)
from hmarl.cli import main
from hmarl.config import ConfigError, build_config
from hmarl.errors import DataError
from hmarl.evaluation.period import BASELINES, POLICY
from hmarl.steps.gate import assess
from hmarl.steps.runner import execute

REPO = Path(__file__).resolve().parents[1]
SEEDS = (42, 1337, 9001)


def _cfg(*overrides: str):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return build_config(
        raw,
        [
            "tracking.enabled=false",
            "splits.n_folds=3",
            "walk_forward.folds=[0,1,2]",
            f"stage5.seeds={list(SEEDS)}",
            *overrides,
        ],
    )


def _tree(tmp_path: Path, seed_overrides: dict | None = None, **fold_kw) -> dict[str, dict[str, str]]:
    cfg = _cfg()
    write_stage5(tmp_path / "stage5", SEEDS, passing_seed_values(cfg.gate), seed_overrides)
    write_walk_forward(tmp_path / "walk_forward", make_folds(3, 200, **fold_kw))
    return {
        "inputs": {"stage5": str(tmp_path / "stage5"), "walk_forward": str(tmp_path / "walk_forward")},
        "outputs": {"report": str(tmp_path / "gate"), "plots": str(tmp_path / "plots")},
    }


def _run(tmp_path: Path, tree: dict, *overrides: str) -> tuple[dict, dict]:
    metrics = execute("gate", _cfg(*overrides), tree["inputs"], tree["outputs"], tmp_path / "metrics.json")
    return metrics, json.loads((tmp_path / "gate" / "gate.json").read_text())


def test_go_when_every_criterion_passes_and_every_output_is_written(tmp_path):
    tree = _tree(tmp_path)
    metrics, gate = _run(tmp_path, tree)
    assert gate["decision"] == "go" and gate["failing"] == [] and metrics["go"] == 1.0
    report = tmp_path / "gate"
    names = {"gate.json", "values.json", "metrics.json", "evaluation.json", "report.html", "report.md"}
    assert names | {"seeds.json"} <= {p.name for p in report.iterdir()}
    values = json.loads((report / "values.json").read_text())
    crit = gate["criteria"]
    # the walk-forward values are the aggregate's, the Stage 5 ones the worst seed's
    ev = json.loads((report / "metrics.json").read_text())
    assert values["symbol_walk_forward_sharpe"] == pytest.approx(ev["symbol_agents"]["sharpe"])
    reduction = 1 - ev[POLICY]["max_drawdown"] / ev["no_master"]["max_drawdown"]
    assert crit["master_drawdown_reduction"]["value"] == pytest.approx(reduction)
    assert metrics["strategic_sharpe"] == pytest.approx(ev[POLICY]["sharpe"])
    seeds = json.loads((report / "seeds.json").read_text())
    assert seeds["seeds"] == [str(s) for s in SEEDS]
    assert json.loads((tmp_path / "metrics.json").read_text())["go"] == 1.0  # the DVC metrics file
    # DVC plots: numeric x column, one column per strategy
    with open(tmp_path / "plots" / "equity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", POLICY, *BASELINES] and len(rows) == 601
    assert float(rows[0][POLICY]) == 1.0
    with open(tmp_path / "plots" / "cost_stress.csv") as fh:
        assert [float(r["cost_bps"]) for r in csv.DictReader(fh)] == [0.0, 15.0, 30.0, 50.0]
    assert (tmp_path / "plots" / "entropy.csv").exists()


def test_report_is_self_contained_with_every_section(tmp_path):
    _run(tmp_path, _tree(tmp_path))
    html = (tmp_path / "gate" / "report.html").read_text()
    assert not re.search(r"https?://", html)  # (base64 has no ':', so this cannot hit inside a chart)
    assert all(src.startswith("data:") for src in re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)", html))
    headings = re.findall(r"<h2>(.*?)</h2>", html)
    assert [h for h in REPORT_SECTIONS if h not in headings] == []
    # every chart section holds a chart, none says "not available"
    for title in ("Equity", "Drawdowns", "Action mix over time", "Entropy", "Reward component contributions"):
        section = html.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]
        assert "data:image/png;base64," in section, title
    assert html.count("<img") >= 6
    md = (tmp_path / "gate" / "report.md").read_text()
    assert "**Gate: GO**" in md and "## Folds" in md


def test_no_go_names_the_failing_criterion(tmp_path):
    tree = _tree(tmp_path, seed_overrides={1337: {"voluntary_trade_rate_mean": 0.05}})
    metrics, gate = _run(tmp_path, tree)
    assert gate["decision"] == "no-go" and gate["failing"] == ["voluntary_trade_rate_mean"]
    assert gate["criteria"]["voluntary_trade_rate_mean"]["value"] == pytest.approx(0.05)  # the worst seed
    assert metrics["go"] == 0.0 and metrics["failing_criteria"] == 1.0
    assert "FAIL" in (tmp_path / "gate" / "report.html").read_text()


def test_symbol_agents_without_an_edge_fail_the_learning_criterion(tmp_path):
    tree = _tree(tmp_path, edge={"symbol_agents": 0.0})
    _, gate = _run(tmp_path, tree)
    assert gate["decision"] == "no-go" and "symbol_walk_forward_sharpe" in gate["failing"]
    assert "symbol_timing_edge_t" in gate["failing"]  # no skill beyond the market's drift either


def test_missing_or_nan_values_fail_closed(tmp_path):
    tree = _tree(tmp_path, seed_overrides={9001: {"diversity_bonus_mean": None}})
    for s in SEEDS:  # a value no seed measured
        path = tmp_path / "stage5" / f"seed_{s}" / "values.json"
        v = json.loads(path.read_text())
        v.pop("warmup_masking_events")
        path.write_text(json.dumps(v))
    _, gate = _run(tmp_path, tree)
    assert gate["decision"] == "no-go"
    assert set(gate["failing"]) == {"diversity_bonus_mean", "warmup_masking_events"}
    assert gate["criteria"]["diversity_bonus_mean"]["problem"] == "nan"
    assert gate["criteria"]["warmup_masking_events"]["problem"] == "missing"


def _assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "gate").exists() and not (tmp_path / "plots").exists()
    assert not (tmp_path / "metrics.json").exists()


def test_missing_fold_is_an_error_and_nothing_is_written(tmp_path):
    tree = _tree(tmp_path)
    for p in (tmp_path / "walk_forward" / "fold_2").iterdir():
        p.unlink()
    (tmp_path / "walk_forward" / "fold_2").rmdir()
    with pytest.raises(DataError, match=r"fold\(s\) \[2\]"):
        _run(tmp_path, tree)
    _assert_nothing_written(tmp_path)
    with pytest.raises(ConfigError, match=r"walk_forward.folds.*missing fold\(s\) \[2\]"):
        _run(tmp_path, tree, "walk_forward.folds=[0,1]")
    _assert_nothing_written(tmp_path)


def test_missing_seed_is_an_error_and_nothing_is_written(tmp_path):
    tree = _tree(tmp_path)
    (tmp_path / "stage5" / "seed_1337" / "values.json").rename(tmp_path / "stage5" / "seed_1337" / "x")
    with pytest.raises(DataError, match=r"seed_1337/values.json"):
        _run(tmp_path, tree)
    _assert_nothing_written(tmp_path)
    with pytest.raises(DataError, match=r"seed\(s\) \[7\]"):
        _run(tmp_path, tree, "stage5.seeds=[42,7]")
    _assert_nothing_written(tmp_path)


def test_cli_exits_non_zero_naming_the_missing_seed(tmp_path, capsys):
    tree = _tree(tmp_path)
    args = [
        "step",
        "gate",
        "--params",
        str(REPO / "params.yaml"),
        "--metrics",
        str(tmp_path / "metrics.json"),
    ]
    for flag, paths in (("--input", tree["inputs"]), ("--output", tree["outputs"])):
        args += [a for k, v in paths.items() for a in (flag, f"{k}={v}")]
    for o in (
        "tracking.enabled=false",
        "splits.n_folds=3",
        "walk_forward.folds=[0,1,2]",
        "stage5.seeds=[42,5]",
    ):
        args += ["--set", o]
    assert main(args) == 2
    assert "seed(s) [5]" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


def test_assess_gives_the_verdict_without_writing(tmp_path):
    tree = _tree(tmp_path, seed_overrides={42: {"extra_seed_metric": 1.0}})
    a = assess(_cfg(), tree["inputs"]["stage5"], tree["inputs"]["walk_forward"])
    assert a.verdict.go and a.agg.labels == ["fold_0", "fold_1", "fold_2"]
    assert set(a.telemetry) == {str(s) for s in SEEDS}
    _assert_nothing_written(tmp_path)


@pytest.mark.integration
def test_dvc_renders_every_declared_gate_plot(tmp_path):
    """The dvc.yaml plot definitions name columns the gate writes: `dvc plots show` draws every line."""
    tree = _tree(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, repo / name)
    tree["outputs"]["plots"] = str(repo / "plots" / "gate")
    _run(tmp_path, tree)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=repo, env=env, check=True)
    proc = subprocess.run([dvc, "plots", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert not shown.get("errors")
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    written = {p.name for p in (repo / "plots" / "gate").iterdir()}
    for entry in declared:
        ((path, props),) = entry.items()
        assert Path(path).name in written, path
        values = shown["data"][path][0]["content"]["data"]["values"]
        ys = props["y"] if isinstance(props["y"], list) else [props["y"]]
        # multi-line plots come back long (one row per point and field), bar charts as the rows
        fields = {v.get("field") for v in values} if len(ys) > 1 else set(ys)
        assert set(ys) <= fields | set(values[0]), (path, ys)
        assert values and all(props["x"] in v for v in values), path


@pytest.mark.integration
def test_mlflow_trials_deflate_the_sharpe_and_the_gate_run_is_logged(tmp_path):
    from mlflow import MlflowClient

    from hmarl.tracking import Tracker

    tracking = [
        "tracking.enabled=true",
        f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_root={tmp_path}/artifacts",
    ]
    cfg = _cfg(*tracking)
    for sharpe in (0.4, 1.1, -0.2):  # three training runs of this experiment
        with Tracker(cfg.tracking).start_run("train_symbols") as tr:
            tr.log_metrics({"final/test_sharpe_agent": sharpe, "final/other": 9.0})
    tree = _tree(tmp_path)
    metrics, gate = _run(tmp_path, tree, *tracking)
    over = json.loads((tmp_path / "gate" / "evaluation.json").read_text())["overfitting"]
    assert over["trials_source"] == "mlflow" and over["dsr_n_trials"] == 3
    assert over["dsr_trial_sharpe_std"] == pytest.approx(float(np.std([0.4, 1.1, -0.2], ddof=1)))
    client = MlflowClient(tracking_uri=cfg.tracking.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'gate'")
    assert run.data.tags["decision"] == gate["decision"] == "go"
    assert run.data.metrics["go"] == 1.0
    assert run.data.metrics["symbol_walk_forward_sharpe"] == pytest.approx(
        metrics["symbol_walk_forward_sharpe"]
    )
    assert "gate/report.html" in {a.path for a in client.list_artifacts(run.info.run_id, "gate")}
