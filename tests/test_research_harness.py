"""The research harness's bookkeeping (research/, outside the package): a named configuration keeps its
overrides and refuses other ones; a master-only trial copies another trial's agents only where it has them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research"))

import trial  # noqa: E402
import trials_table  # noqa: E402
import walk_forward_seeds  # noqa: E402


def _args(tmp_path: Path, command: str, overrides: list[str], config: str | None = "cfg-a"):
    return argparse.Namespace(upstream=str(tmp_path), command=command, overrides=overrides, config=config)


def test_a_named_configuration_keeps_its_overrides_and_refuses_others(tmp_path):
    first = _args(tmp_path, "run", ["reward.risk_aversion=3.0", "env.master.rebalance=target"])
    walk_forward_seeds.config_overrides(first)
    kept = tmp_path / "configs" / "cfg-a" / "overrides.json"
    assert json.loads(kept.read_text()) == first.overrides

    later = _args(tmp_path, "table", [])  # table reads them back
    walk_forward_seeds.config_overrides(later)
    assert later.overrides == first.overrides

    other = _args(tmp_path, "run", ["reward.risk_aversion=10.0"])
    with pytest.raises(SystemExit, match="other overrides"):
        walk_forward_seeds.config_overrides(other)
    assert json.loads(kept.read_text()) == first.overrides  # untouched


def test_named_configurations_get_their_own_fold_folders(tmp_path):
    mine = walk_forward_seeds.fold_dirs(tmp_path, 42, [0, 3], "cfg-a")
    assert mine == [tmp_path / "configs/cfg-a/seed_42/fold_0", tmp_path / "configs/cfg-a/seed_42/fold_3"]
    # without a name, seed 42 is the reference run's own walk-forward
    assert walk_forward_seeds.fold_dirs(tmp_path, 42, [1])[0] == tmp_path / "reports/walk_forward/fold_1"
    assert walk_forward_seeds.fold_dirs(tmp_path, 7, [1])[0] == tmp_path / "seeds/seed_7/fold_1"


def test_a_master_only_trial_reuses_agents_only_where_the_source_has_them(tmp_path):
    source, work = tmp_path / "runs" / "src", tmp_path / "runs" / "new"
    (source / "fold_0" / "symbols").mkdir(parents=True)
    (source / "fold_0" / "symbols" / "agent.pt").write_bytes(b"agents")
    (source / "fold_3" / "symbols").mkdir(parents=True)  # an unfinished fold: no agent.pt
    trial.reuse_symbol_agents(source, work, [0, 3])
    assert (work / "fold_0" / "symbols" / "agent.pt").read_bytes() == b"agents"
    assert not (work / "fold_3").exists()  # that fold trains in the new trial


def test_the_trials_table_averages_over_the_folds_and_keeps_the_worst_drawdown(tmp_path, capsys):
    def fold(sharpe, dd):
        return {
            f"{a}_{k}": v
            for a in trials_table.ARMS
            for k, v in (
                ("sharpe", sharpe),
                ("annual_return", sharpe / 10),
                ("max_drawdown", dd),
                ("exposure", 0.5),
            )
        }

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "trial.json").write_text(
        json.dumps({"folds": {"3": fold(1.0, 0.2), "0": fold(-0.5, 0.1)}})
    )
    sys.argv = ["trials_table.py", "t", "missing", "--runs", str(tmp_path)]
    trials_table.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== t (folds 0, 3)" and "missing: no trial.json (running, or not run)" in out
    r = json.loads(out[-1])["t"]["policy"]
    assert r["sharpe"] == pytest.approx(0.25) and r["sharpe_per_fold"] == [-0.5, 1.0]  # folds in order
    assert r["max_drawdown_mean"] == pytest.approx(0.15) and r["max_drawdown_worst"] == 0.2
    assert r["annual_return"] == pytest.approx(0.025) and r["exposure"] == 0.5
