"""Early stopping of the master on its fold's validation bars (``master.validate_every``,
learners/early_stopping.py): the kept weights are the best-scoring ones, the score is the greedy hierarchy's
excess Sharpe over the validation bars, training itself is unchanged, and a resumed run keeps the choice."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hmarl.data.splits import Fold
from hmarl.errors import StepError
from hmarl.io import read_json
from hmarl.learners.agent_folder import load_symbol_agents
from hmarl.learners.early_stopping import EarlyStopping, early_stopping
from hmarl.learners.master_trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from test_master_train import config, master_upstream, master_weights, series, train_step  # noqa: E402


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, str]:
    return master_upstream(tmp_path_factory.mktemp("upstream"))


ES = ["master.validate_every=1", "master.total_steps=96"]  # 6 updates, each scored


class Recording(EarlyStopping):
    """Remembers the weights it scored, per update."""

    seen: dict

    def observe(self, master, update):
        self.seen[update] = copy.deepcopy(master.state_dict())
        return super().observe(master, update)


def _direct(upstream, tmp_path, *extra):
    cfg, data, symbols = load_symbol_agents(
        config(tmp_path, *extra), {k: Path(v) for k, v in upstream.items()}
    )
    market = data.market(cfg, torch.device("cpu"))
    tables = data.tables(cfg, torch.device("cpu")).restrict(*data.fold.train)
    return cfg, data, market, tables, symbols


def test_the_kept_master_is_the_best_scored_and_training_is_unchanged(upstream, tmp_path):
    cfg, data, market, tables, symbols = _direct(upstream, tmp_path, *ES)
    base = early_stopping(cfg, data, market, symbols)
    stopper = Recording(
        **{k: getattr(base, k) for k in ("cfg", "market", "tables", "symbols", "bench", "bars", "every")}
    )
    stopper.seen = {}
    assert stopper.bars == data.fold.val and data.fold.val[0] >= data.fold.train[1]  # never a train bar
    res = train(cfg, market, tables, symbols, data.fold.train, None, stopper=stopper)
    scores = [row["val_sharpe"] for row in res.series]
    assert len(scores) == 6 and len(set(scores)) > 1  # a real curve: the choice matters
    best = max(range(6), key=lambda i: (scores[i], -i)) + 1  # the first of the best
    assert res.best_update == best == stopper.best_update
    kept = res.master.state_dict()
    assert all(torch.equal(kept[k], stopper.seen[best][k]) for k in kept)
    # scoring the kept master from scratch gives the kept score: it is the validation Sharpe
    assert base.score(res.master) == pytest.approx(max(scores), abs=1e-12)

    plain = train(cfg, market, tables, symbols, data.fold.train, None)  # the same run without scoring
    drop = {"val_sharpe", "SPS"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in res.series] == [
        {k: v for k, v in r.items() if k not in drop} for r in plain.series
    ]
    assert plain.best_update is None and "val_sharpe" not in plain.series[0]
    if best != 6:  # without early stopping the last weights are returned
        last = plain.master.state_dict()
        assert not all(torch.equal(last[k], kept[k]) for k in last)


def test_the_step_reports_the_curve_and_a_resumed_run_keeps_the_choice(upstream, tmp_path):
    metrics, full = train_step(upstream, tmp_path, *ES, "master.checkpoint_every=1", out="full")
    rows = read_json(full / "telemetry.json")["series"]
    curve = [r["val_sharpe"] for r in rows]
    assert metrics["best_update"] == 1 + curve.index(max(curve))
    assert metrics["best_val_sharpe"] == pytest.approx(max(curve))
    (run_dir,) = list((tmp_path / "mck").iterdir())
    (run_dir / "update_0000006" / "manifest.json").unlink()  # killed after update 5's checkpoint
    again, resumed = train_step(upstream, tmp_path, *ES, "master.checkpoint_every=1", out="resumed")
    assert again["resumed"] == 1.0 and again["best_update"] == metrics["best_update"]
    wf, wr = master_weights(full), master_weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert series(full) == series(resumed)


def test_too_few_validation_bars_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, "master.validate_every=2")
    data = SimpleNamespace(fold=Fold(3, (0, 50), (52, 54), (56, 80)))
    with pytest.raises(StepError, match=r"master.validate_every=2: fold 3 has 2 validation bars"):
        early_stopping(cfg, data, None, None)
    assert early_stopping(config(tmp_path), data, None, None) is None  # off by default
