"""Train the master agent (MAPPO) over the frozen symbol agents; backtest it against the neutral directive.

Output ``model`` (default ``models/master``)::

    master.pt        the master: torch.load(weights_only=True); rebuild with hmarl.agents.saved_master
    manifest.json    version, config, data fingerprint, symbols, feature names, fold, env steps, run key
    telemetry.json   the per-update series and the directive histogram of every update
    evaluation.json  held-out backtest on the fold's test bars: the same symbol agents under the trained
                     master vs under the fixed neutral directive (max drawdown, total return, Sharpe)

Resume checkpoints live in ``master.checkpoint_dir/<run key>`` (config + input identities, as in
train_symbols): rerunning a killed step continues from its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.data import TrainingData, load_training_data
from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.master import benchmark_table
from hmarl.agents.params import AgentConfig
from hmarl.agents.saved import load_agent
from hmarl.agents.saved_master import MASTER_VERSION, save_master
from hmarl.config import HmarlConfig, config_dict
from hmarl.errors import DataError
from hmarl.evaluation.metrics import drawdown_reduction, finite_or_none, max_drawdown
from hmarl.io import write_json
from hmarl.learners.checkpoint import run_key as checkpoint_key
from hmarl.learners.evaluate import agent_policy, backtest
from hmarl.learners.master_trainer import MasterResult, train
from hmarl.tracking import Tracker
from hmarl.tracking.tensorboard import TensorBoardTracker, Trackers

log = logging.getLogger(__name__)

INPUTS = {
    "store": "data/features",
    "sl_cache": "data/sl_cache",
    "encoder": "models/encoder",
    "symbols": "models/symbols",
}
OUTPUTS = {"model": "models/master"}
_BOOKKEEPING = {"checkpoint_dir", "checkpoint_every", "eval_envs"}


def load_inputs(cfg: HmarlConfig, inputs: dict[str, Path]):
    """Training data of the symbol agents' fold and the frozen symbol agents, cross-checked."""
    sym_dir = Path(inputs["symbols"])
    if not (sym_dir / "agent.pt").exists():
        raise DataError(f"{sym_dir}: not a symbol-agent folder (agent.pt missing); run train_symbols")
    agent, meta = load_agent(sym_dir / "agent.pt")
    # the tables must match how the symbol agents were trained (cached embeddings or windows)
    cfg = cfg.model_copy(update={"agent": AgentConfig(**meta["agent"])})
    data = load_training_data(cfg, inputs)
    if meta["fingerprint"] != data.fingerprint:
        raise DataError(
            f"{sym_dir}: symbol agents trained on data {meta['fingerprint']!r}, the feature store holds "
            f"{data.fingerprint!r}; rerun train_symbols"
        )
    if meta["symbols"] != data.symbols:
        raise DataError(f"{sym_dir}: the symbol agents' symbols differ from the feature store's")
    if meta["fold"] != data.fold.index:
        raise DataError(
            f"{sym_dir}: symbol agents trained on fold {meta['fold']}, ppo.fold selects {data.fold.index}"
        )
    return cfg, data, agent


def run_key(cfg: HmarlConfig, data: TrainingData, sym_dir: Path) -> str:
    agent_digest = hashlib.sha256((sym_dir / "agent.pt").read_bytes()).digest()
    return checkpoint_key(config_dict(cfg), "master", _BOOKKEEPING, data.digest().encode(), agent_digest)


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    cfg, data, symbols = load_inputs(cfg, inputs)  # every input check happens before anything is trained
    key = run_key(cfg, data, Path(inputs["symbols"]))
    checkpoints = Path(cfg.master.checkpoint_dir) / key
    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    if cfg.device == "auto" and torch.cuda.is_available():
        device = torch.device("cuda")
    market = data.market(cfg, device)
    tables = data.tables(cfg, device)
    symbols = symbols.to(device)
    trackers = Trackers(Tracker(cfg.tracking), TensorBoardTracker(cfg.tracking))
    t0 = time.perf_counter()
    with trackers.start_run(
        "train_master", tags={"step": "train_master", "profile": cfg.profile, "run_key": key}
    ) as tracker:
        tracker.log_params({"master": cfg.master.model_dump(), "env": cfg.env.model_dump(), "seed": cfg.seed})
        result = train(
            cfg, market, tables.restrict(*data.fold.train), symbols, data.fold.train, checkpoints, tracker
        )
        evaluation = evaluate(cfg, market, tables, symbols, result, data.fold.test)
        summary = _summary(result, evaluation, time.perf_counter() - t0)
        out = Path(outputs["model"])
        _write_outputs(out, cfg, data, result, evaluation, summary, key, str(checkpoints))
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items()}, step=result.global_step)
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


def evaluate(cfg: HmarlConfig, market, tables, symbols, result: MasterResult, bars: tuple[int, int]) -> dict:
    """The same symbol agents on the held-out bars, with the trained (greedy) master and with the fixed
    neutral directive; both arms sample the symbol agents with the same seeds (``master.eval_envs``
    accounts each). Max drawdown and return are of the mean account equity (the portfolio of the arm)."""
    tables = tables.restrict(*bars)
    bench = benchmark_table(market.benchmark, cfg.env.master.interval).to(market.device)
    h = Hierarchy(symbols, tables, result.master, bench)
    n, out = cfg.master.eval_envs, {"bars": list(bars)}
    for name, director in (("master", h.director()), ("neutral", None)):
        gen = torch.Generator(market.device).manual_seed(cfg.seed)
        bt = backtest(market, cfg, bars, agent_policy(symbols, tables, False, gen), n, cfg.seed, director)
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


def _summary(result: MasterResult, evaluation: dict, seconds: float) -> dict[str, float]:
    summary = {
        "env_steps": float(result.global_step),
        "updates": float(len(result.series)),
        "resumed": float(result.resumed_from is not None),
        "seconds": seconds,
        "drawdown_reduction": float(
            evaluation["drawdown_reduction"] if evaluation["drawdown_reduction"] is not None else float("nan")
        ),
        "return_difference": evaluation["return_difference"],
    }
    for arm in ("master", "neutral"):
        summary[f"test_max_drawdown_{arm}"] = evaluation[arm]["max_drawdown"]
        summary[f"test_return_{arm}"] = evaluation[arm]["total_return"]
        summary[f"test_sharpe_{arm}"] = evaluation[arm]["sharpe"]
    return summary


def _write_outputs(
    out: Path, cfg, data: TrainingData, result: MasterResult, evaluation, summary, key, checkpoints
) -> None:
    out.mkdir(parents=True)
    meta = data.identity
    save_master(out / "master.pt", result.master, interval=cfg.env.master.interval, **meta)
    write_json(
        out / "manifest.json",
        {
            "version": MASTER_VERSION,
            "run_key": key,
            "checkpoint_dir": checkpoints,
            "config": config_dict(cfg),
            "fold": data.fold.to_dict(),
            "env_steps": result.global_step,
            "updates": len(result.series),
            "resumed_from_update": result.resumed_from,
            "critic": cfg.master.critic,
            **meta,
        },
    )
    write_json(out / "telemetry.json", {"series": result.series, "directive_counts": result.directive_counts})
    write_json(out / "evaluation.json", evaluation)
    write_json(out / "summary.json", summary)
