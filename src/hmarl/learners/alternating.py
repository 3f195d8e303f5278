"""The master step's hierarchical schedule: the master over the frozen symbol agents, then optional
alternating fine-tuning rounds (``master.alternating_rounds``)::

    master (master.total_steps, symbol agents frozen)
    round r = 1..R: symbol agents (master.finetune_symbol_steps, PPO with ppo.*, the master's directives
                    active) -> master (master.finetune_master_steps, continued, fine-tuned agents frozen)

Each phase is one resumable run of its trainer (:func:`hmarl.learners.symbol_trainer.train`,
:func:`hmarl.learners.master_trainer.train`) with its own checkpoint folder under the step's run folder
(the first master phase at its root, then ``round_<r>/symbols`` and ``round_<r>/master``). A phase that
already finished resumes at its final checkpoint and returns at once, so a killed step continues in the
phase where it stopped. Round ``r`` draws its env seeds from ``seed + r``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from hmarl.agents.data import TrainingData
from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import MasterAgent, benchmark_table
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.market import MarketData
from hmarl.learners import master_trainer, symbol_trainer
from hmarl.learners.collect import Director
from hmarl.learners.distributed import DistInfo
from hmarl.learners.early_stopping import early_stopping


@dataclass
class Phase:
    round: int
    kind: Literal["master", "symbols"]
    series: list[dict[str, float]]  # the trainer's per-update metrics
    env_steps: int
    resumed_from: int | None
    directive_counts: list[list[int]] | None = None  # master phases: the directive histogram per update
    resume_skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification
    best_update: int | None = None  # master phases under early stopping: the update whose weights were kept


@dataclass
class ScheduleResult:
    master: MasterAgent
    symbols: SymbolAgent  # the input agents when there are no rounds, else the last round's
    phases: list[Phase]

    def of(self, kind: str) -> list[Phase]:
        return [p for p in self.phases if p.kind == kind]

    @property
    def resumed(self) -> bool:
        return any(p.resumed_from is not None for p in self.phases)


class PhaseTracker:
    """A tracker view for one phase: steps continue after the earlier phases of the same kind, and the
    names get a prefix (symbol fine-tuning charts stay apart from the master's)."""

    def __init__(self, tracker, offset: int, prefix: str = ""):
        self.tracker, self.offset, self.prefix = tracker, offset, prefix

    def _step(self, step: int | None) -> int | None:
        return None if step is None else step + self.offset

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step=self._step(step))

    def log_histogram(self, tag: str, values, step: int | None = None, bins="auto") -> None:
        self.tracker.log_histogram(self.prefix + tag, values, step=self._step(step), bins=bins)


def master_director(
    master: MasterAgent, market: MarketData, cfg: HmarlConfig, greedy: bool
) -> Callable[[SymbolAgent, AgentTables, torch.Generator], Director]:
    """``(agent, tables, generator) -> director`` for :func:`symbol_trainer.train`: the (fixed) master
    choosing directives from what the learning symbol agents currently intend."""
    bench = benchmark_table(market.benchmark, cfg.env.master.interval).to(market.device)
    master.eval()

    def directed(agent: SymbolAgent, tables: AgentTables, gen: torch.Generator) -> Director:
        return Hierarchy(agent, tables, master, bench).director(greedy, gen)

    return directed


def _sub(root: Path | None, *parts: str) -> Path | None:
    return root.joinpath(*parts) if root is not None else None


def _view(tracker, offset: int, prefix: str = ""):
    return PhaseTracker(tracker, offset, prefix) if tracker is not None else None


def train_schedule(
    cfg: HmarlConfig,
    data: TrainingData,
    market: MarketData,
    symbols: SymbolAgent,
    info: DistInfo,
    checkpoints: Path | None = None,
    tracker=None,
) -> ScheduleResult:
    m, bars = cfg.master, data.fold.train
    tables = data.tables(cfg, market.device).restrict(*bars)
    stopper = early_stopping(cfg, data, market, symbols)  # None unless master.validate_every
    res = master_trainer.train(
        cfg, market, tables, symbols, bars, checkpoints, tracker, info, stopper=stopper
    )
    phases = [_master_phase(0, res)]
    master = res.master
    master_steps, symbol_steps = res.global_step, 0
    for r in range(1, m.alternating_rounds + 1):
        seeded = cfg.model_copy(update={"seed": cfg.seed + r})
        sym_cfg = seeded.model_copy(
            update={"ppo": cfg.ppo.model_copy(update={"total_steps": m.finetune_symbol_steps})}
        )
        ft = symbol_trainer.train(
            sym_cfg,
            data,
            info,
            _sub(checkpoints, f"round_{r}", "symbols"),
            _view(tracker, symbol_steps, "finetune_symbols/"),
            init_state=symbols.state_dict(),
            directed=master_director(master, market, cfg, m.finetune_directive == "greedy"),
        )
        symbols, symbol_steps = ft.agent.eval(), symbol_steps + ft.global_step
        phases.append(
            Phase(r, "symbols", ft.series, ft.global_step, ft.resumed_from, None, ft.resume_skipped)
        )

        master_cfg = seeded.model_copy(
            update={"master": m.model_copy(update={"total_steps": m.finetune_master_steps})}
        )
        res = master_trainer.train(
            master_cfg,
            market,
            tables,
            symbols,
            bars,
            _sub(checkpoints, f"round_{r}", "master"),
            _view(tracker, master_steps),
            info,
            init_state=master.state_dict(),
            stopper=early_stopping(master_cfg, data, market, symbols),
        )
        master, master_steps = res.master, master_steps + res.global_step
        phases.append(_master_phase(r, res))
    return ScheduleResult(master, symbols, phases)


def _master_phase(r: int, res: master_trainer.MasterResult) -> Phase:
    return Phase(
        r,
        "master",
        res.series,
        res.global_step,
        res.resumed_from,
        res.directive_counts,
        res.resume_skipped,
        res.best_update,
    )
