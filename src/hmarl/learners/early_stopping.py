"""Early stopping of the master on its fold's validation bars (``master.validate_every``).

Every ``validate_every`` updates (and after the last) the master in training is scored the way the
walk-forward evaluates it: the greedy hierarchy (:class:`~hmarl.evaluation.backtest.Directed`) over the
fold's **validation** bars, which training never reads (they lie between the train bars and the test bars,
``data/splits.py``), one account, net of costs; the score is that account's Sharpe in excess of the cash
rate. The best-scoring weights are kept and are the master the stage returns, so the training budget is
chosen on validation value, not on the test folds, and the scores are the master's learning curve (the
``val_sharpe`` column of its telemetry, one MLflow metric per scored update).

The best weights and score travel in the trainer's checkpoints, so a resumed run keeps the same choice.
Scoring reads no training RNG (its own simulator, greedy decisions), so with it on the training numbers are
those of a run without it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.master import benchmark_table
from hmarl.errors import StepError
from hmarl.evaluation.backtest import Directed, backtest


@dataclass
class EarlyStopping:
    """Scores a master on the validation bars and remembers the best one."""

    cfg: object  # HmarlConfig
    market: object  # MarketData
    tables: object  # AgentTables restricted to the validation bars
    symbols: torch.nn.Module
    bench: torch.Tensor  # the master's market-reference table (agents/master.py benchmark_table)
    bars: tuple[int, int]
    every: int
    best_score: float = float("-inf")
    best_update: int = 0
    best_state: dict | None = field(default=None, repr=False)

    def due(self, update: int, num_updates: int) -> bool:
        """Whether the master is scored after update ``update`` (1-based)."""
        return update % self.every == 0 or update == num_updates

    def score(self, master: torch.nn.Module) -> float:
        """Excess Sharpe of the greedy hierarchy with ``master`` over the validation bars (-inf if not
        finite: a policy that cannot be scored is never kept)."""
        was_training = master.training
        policy = Directed(Hierarchy(self.symbols, self.tables, master.eval(), self.bench))
        bt = backtest(self.market, self.cfg, self.bars, policy, 1, self.cfg.seed)
        master.train(was_training)
        value = float(bt.sharpe[0])
        return value if math.isfinite(value) else float("-inf")

    def observe(self, master: torch.nn.Module, update: int) -> float:
        """Score ``master`` after ``update``; keep its weights when it beats the best so far."""
        value = self.score(master)
        if value > self.best_score:
            self.best_score, self.best_update = value, update
            self.best_state = copy.deepcopy(master.state_dict())
        return value

    def restore_best(self, master: torch.nn.Module) -> None:
        if self.best_state is not None:
            master.load_state_dict(self.best_state)

    def state(self) -> dict:
        return {"score": self.best_score, "update": self.best_update, "state": self.best_state}

    def load(self, payload: dict | None) -> None:
        if payload:
            self.best_score, self.best_update = float(payload["score"]), int(payload["update"])
            self.best_state = payload["state"]


def early_stopping(cfg, data, market, symbols) -> EarlyStopping | None:
    """The fold's validator when ``master.validate_every > 0``, else None."""
    every = cfg.master.validate_every
    if not every:
        return None
    lo, hi = data.fold.val
    if hi - lo < 3:
        raise StepError(
            f"master.validate_every={every}: fold {data.fold.index} has {hi - lo} validation bars "
            f"({lo}..{hi}); early stopping needs at least 3 (splits.val_bars)"
        )
    tables = data.tables(cfg, market.device).restrict(lo, hi)
    bench = benchmark_table(market.benchmark, cfg.env.master.interval).to(market.device)
    return EarlyStopping(cfg, market, tables, symbols, bench, (lo, hi), every)
