"""The master's training stage: MAPPO over the frozen symbol agents, a held-out backtest against the neutral
directive, and the model folder (the train_master step's output; walk_forward trains with it too).

Output ``model`` (default ``models/master``)::

    master.pt        the master: torch.load(weights_only=True); rebuild with hmarl.agents.saved_master
    manifest.json    version, config, data fingerprint, symbols, feature names, fold, env steps, run key
    telemetry.json   the per-update series and the directive histogram of every update
    evaluation.json  held-out backtest on the fold's test bars: the same symbol agents under the trained
                     master vs under the fixed neutral directive (max drawdown, total return, Sharpe)
    symbols/         only with master.alternating_rounds > 0: the symbol agents fine-tuned in the rounds
                     (agent.pt in train_symbols' format, manifest.json, telemetry.json); they are the
                     symbol agents of this master (evaluation.json, walk-forward, promote use them)

Schedule (hmarl.learners.alternating): the master over the frozen symbol agents, then the optional
alternating rounds. Resume checkpoints live in ``master.checkpoint_dir/<run key>`` (config + input
identities, as in train_symbols; the rounds are part of the config): rerunning a killed step continues
from its last complete checkpoint. With ``master.world_size > 1`` training runs as that many DDP
processes (gloo on CPU, NCCL on GPUs); rank 0 evaluates and writes the outputs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.data import TrainingData
from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.master import benchmark_table
from hmarl.agents.saved import AGENT_VERSION
from hmarl.agents.saved_master import MASTER_VERSION, save_master
from hmarl.config import HmarlConfig, config_dict
from hmarl.evaluation.backtest import Directed, agent_policy, backtest
from hmarl.evaluation.metrics import drawdown_reduction, finite_or_none, max_drawdown
from hmarl.io import read_json, write_json
from hmarl.learners.agent_folder import load_symbol_agents, write_agent
from hmarl.learners.alternating import ScheduleResult, train_schedule
from hmarl.learners.checkpoint import run_key as checkpoint_key
from hmarl.learners.checkpoint import run_lock
from hmarl.learners.distributed import DistInfo, launch
from hmarl.tracking import Tracker
from hmarl.tracking.tensorboard import TensorBoardTracker, Trackers

log = logging.getLogger(__name__)

_BOOKKEEPING = {"checkpoint_dir", "checkpoint_every", "lock_wait_s", "eval_envs"}


def run_key(cfg: HmarlConfig, data: TrainingData, sym_dir: Path) -> str:
    agent_digest = hashlib.sha256((sym_dir / "agent.pt").read_bytes()).digest()
    return checkpoint_key(config_dict(cfg), "master", _BOOKKEEPING, data.digest().encode(), agent_digest)


def train_master_stage(cfg: HmarlConfig, inputs: dict[str, Path], out: Path) -> dict[str, float]:
    """Train the master over the frozen symbol agents in ``inputs["symbols"]`` and write the model folder
    ``out``; returns its summary."""
    cfg, data, _ = load_symbol_agents(cfg, inputs)  # every input check happens before anything is trained
    key = run_key(cfg, data, Path(inputs["symbols"]))
    checkpoints = Path(cfg.master.checkpoint_dir) / key
    out = Path(out)
    args = (cfg, {k: str(v) for k, v in inputs.items()}, str(checkpoints), str(out), key)
    with run_lock(checkpoints, cfg.master.lock_wait_s, "master.lock_wait_s"):  # one writer per run key
        launch(_worker, cfg.master.world_size, cfg.device, *args)
    return {k: float(v) for k, v in read_json(out / "summary.json").items()}


def _worker(
    info: DistInfo, cfg: HmarlConfig, inputs: dict[str, str], checkpoints: str, out: str, key: str
) -> None:
    """One rank's training; rank 0 also backtests, writes the output folder and logs to the trackers."""
    cfg, data, symbols = load_symbol_agents(cfg, {k: Path(v) for k, v in inputs.items()})
    market = data.market(cfg, info.device)
    symbols = symbols.to(info.device)
    tracking = cfg.tracking if info.is_main else cfg.tracking.model_copy(update={"enabled": False})
    trackers = Trackers(Tracker(tracking), TensorBoardTracker(tracking))
    t0 = time.perf_counter()
    with trackers.start_run(
        "train_master", tags={"step": "train_master", "profile": cfg.profile, "run_key": key}
    ) as tracker:
        tracker.log_params({"master": cfg.master.model_dump(), "env": cfg.env.model_dump(), "seed": cfg.seed})
        result = train_schedule(
            cfg, data, market, symbols, info, Path(checkpoints), tracker if info.is_main else None
        )
        if not info.is_main:
            return
        pretrained = symbols if cfg.master.alternating_rounds else None
        tables = data.tables(cfg, info.device)
        evaluation = evaluate(cfg, market, tables, result.symbols, result.master, data.fold.test, pretrained)
        summary = _summary(result, evaluation, time.perf_counter() - t0)
        _write_outputs(Path(out), cfg, data, result, evaluation, summary, key, checkpoints)
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items()}, step=int(summary["env_steps"]))
        tracker.log_artifacts(out, "master")
    log.info(
        "train_master: held-out max drawdown %.4f with the master vs %.4f neutral (reduction %.1f %%); "
        "return %.4f vs %.4f",
        summary["test_max_drawdown_master"],
        summary["test_max_drawdown_neutral"],
        100 * summary["drawdown_reduction"],
        summary["test_return_master"],
        summary["test_return_neutral"],
    )
    return summary


def evaluate(
    cfg: HmarlConfig, market, tables, symbols, master, bars: tuple[int, int], pretrained=None
) -> dict:
    """The same symbol agents on the held-out bars, with the trained (greedy) master and with the fixed
    neutral directive; both arms sample the symbol agents with the same seeds (``master.eval_envs``
    accounts each). Max drawdown and return are of the mean account equity (the portfolio of the arm).
    After alternating rounds ``symbols`` are the fine-tuned agents; ``pretrained`` (the input agents)
    under the neutral directive is reported too, as ``neutral_pretrained``."""
    tables = tables.restrict(*bars)
    bench = benchmark_table(market.benchmark, cfg.env.master.interval).to(market.device)
    h = Hierarchy(symbols, tables, master, bench)
    n, out = cfg.master.eval_envs, {"bars": list(bars)}
    arms = [("master", symbols, True), ("neutral", symbols, False)]
    if pretrained is not None:
        arms.append(("neutral_pretrained", pretrained, False))
    for name, agents, directed in arms:
        gen = torch.Generator(market.device).manual_seed(cfg.seed)
        policy = Directed(h, False, gen) if directed else agent_policy(agents, tables, False, gen)
        bt = backtest(market, cfg, bars, policy, n, cfg.seed)
        per_account = np.asarray(max_drawdown(bt.equity))
        out[name] = {
            "max_drawdown": float(max_drawdown(bt.equity.mean(1))),
            "max_drawdown_per_account_mean": float(per_account.mean()),
            "total_return": float(bt.equity[-1].mean() / bt.equity[0].mean() - 1.0),
            "sharpe": float(np.nanmean(bt.sharpe)),
        }
    out["drawdown_reduction"] = finite_or_none(
        drawdown_reduction(out["master"]["max_drawdown"], out["neutral"]["max_drawdown"])
    )
    out["return_difference"] = out["master"]["total_return"] - out["neutral"]["total_return"]
    return out


def _summary(result: ScheduleResult, evaluation: dict, seconds: float) -> dict[str, float]:
    masters = result.of("master")
    summary = {
        "env_steps": float(sum(p.env_steps for p in masters)),  # the master's, over all its phases
        "updates": float(sum(len(p.series) for p in masters)),
        "resumed": float(result.resumed),
        "seconds": seconds,
        "drawdown_reduction": float(
            evaluation["drawdown_reduction"] if evaluation["drawdown_reduction"] is not None else float("nan")
        ),
        "return_difference": evaluation["return_difference"],
    }
    if masters[-1].best_update is not None:  # early stopping: the kept update of the last master phase
        summary["best_update"] = float(masters[-1].best_update)
        summary["best_val_sharpe"] = max(r["val_sharpe"] for r in masters[-1].series if "val_sharpe" in r)
    arms = ["master", "neutral"]
    if "neutral_pretrained" in evaluation:
        arms.append("neutral_pretrained")
        summary["alternating_rounds"] = float(len(masters) - 1)
        summary["symbol_finetune_env_steps"] = float(sum(p.env_steps for p in result.of("symbols")))
    for arm in arms:
        summary[f"test_max_drawdown_{arm}"] = evaluation[arm]["max_drawdown"]
        summary[f"test_return_{arm}"] = evaluation[arm]["total_return"]
        summary[f"test_sharpe_{arm}"] = evaluation[arm]["sharpe"]
    return summary


def _rows(phases) -> list[dict[str, float]]:
    """The phases' per-update rows, each tagged with its round (0: the first master phase)."""
    return [{**row, "round": float(p.round)} for p in phases for row in p.series]


def _write_outputs(
    out: Path, cfg, data: TrainingData, result: ScheduleResult, evaluation, summary, key, checkpoints
) -> None:
    out.mkdir(parents=True)
    meta = data.identity
    masters, finetunes = result.of("master"), result.of("symbols")
    save_master(out / "master.pt", result.master, interval=cfg.env.master.interval, **meta)
    common = {
        "run_key": key,
        "checkpoint_dir": checkpoints,
        "config": config_dict(cfg),
        "fold": data.fold.to_dict(),
    }
    write_json(
        out / "manifest.json",
        {
            "version": MASTER_VERSION,
            **common,
            "env_steps": int(summary["env_steps"]),
            "updates": int(summary["updates"]),
            "resumed_from_update": masters[0].resumed_from,
            "resume_skipped": [s for p in result.phases for s in p.resume_skipped],
            "critic": cfg.master.critic,
            "alternating_rounds": cfg.master.alternating_rounds,
            "world_size": cfg.master.world_size,
            **meta,
        },
    )
    counts = [c for p in masters for c in p.directive_counts]
    write_json(out / "telemetry.json", {"series": _rows(masters), "directive_counts": counts})
    write_json(out / "evaluation.json", evaluation)
    write_json(out / "summary.json", summary)
    if finetunes:  # the symbol agents of this master, in train_symbols' format
        sym = out / "symbols"
        sym.mkdir()
        write_agent(sym / "agent.pt", cfg, data, result.symbols)
        write_json(
            sym / "manifest.json",
            {
                "version": AGENT_VERSION,
                **common,
                "env_steps": sum(p.env_steps for p in finetunes),
                "step_unit": "env steps of fine-tuning under the master's directives (alternating rounds)",
                "alternating_rounds": cfg.master.alternating_rounds,
                "encoder": cfg.agent.encoder,
                **meta,
            },
        )
        write_json(sym / "telemetry.json", {"series": _rows(finetunes), "num_symbols": len(data.symbols)})
