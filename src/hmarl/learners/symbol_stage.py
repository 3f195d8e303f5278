"""The symbol agents' training stage: PPO on one walk-forward fold's train bars, a held-out backtest on its
test bars, and the model folder (the train_symbols step's output; stage5 and walk_forward train with it too).

Output ``model`` (default ``models/symbols``)::

    agent.pt         the final agent: torch.load(weights_only=True); rebuild with hmarl.agents.saved.load_agent
    manifest.json    version, config, data fingerprint, feature names, symbols, fold, env steps, run key
    telemetry.json   the per-update telemetry series (stage5 / gate read it) and the warm-start fit
    evaluation.json  held-out backtest on the fold's test bars: agent vs equal-weight buy-and-hold vs the
                     masked random policy (Sharpe, total return, action shares)

Resume checkpoints live outside the output, in ``ppo.checkpoint_dir/<run key>``: the key hashes the config
(less tracking and bookkeeping keys) and the inputs' identities, so a changed config or new data never
resumes a stale run, and rerunning a killed step continues from its last complete checkpoint.
With ``ppo.world_size > 1`` training runs as that many DDP processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.data import TrainingData, load_training_data
from hmarl.agents.inputs import AgentTables
from hmarl.agents.saved import AGENT_VERSION
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig, config_dict
from hmarl.env.actions import ACTION_NAMES
from hmarl.env.spec import Observation
from hmarl.evaluation.backtest import ObsPolicy, backtest, buy_and_hold, random_policy, risk_free
from hmarl.evaluation.backtest import agent_policy as eval_agent_policy
from hmarl.evaluation.metrics import sharpe_ratio
from hmarl.io import read_json, write_json
from hmarl.learners.agent_folder import write_agent
from hmarl.learners.checkpoint import run_key as checkpoint_key
from hmarl.learners.checkpoint import run_lock
from hmarl.learners.distributed import DistInfo, launch
from hmarl.learners.stage_config import symbol_stage_config
from hmarl.learners.symbol_trainer import TIMING_KEYS, TrainResult, train
from hmarl.learners.telemetry import MANDATORY
from hmarl.tracking import Tracker
from hmarl.tracking.tensorboard import TensorBoardTracker, Trackers

log = logging.getLogger(__name__)

# keys that do not change what is trained: a run differing only in these resumes the same checkpoints
_BOOKKEEPING = {"checkpoint_dir", "checkpoint_every", "lock_wait_s", "progress", "eval_envs"}


def run_key(cfg: HmarlConfig, data: TrainingData) -> str:
    return checkpoint_key(config_dict(cfg), "ppo", _BOOKKEEPING, data.digest().encode())


def train_symbol_stage(
    cfg: HmarlConfig, inputs: dict[str, Path], out: Path, tags: dict[str, str] | None = None
) -> dict[str, float]:
    """Train the symbol agents on ``ppo.fold`` and write the model folder ``out``; returns its summary.
    ``tags``: extra run tags for the trackers (a caller's context, e.g. stage5's seed)."""
    cfg = symbol_stage_config(cfg)
    data = load_training_data(cfg, inputs)  # every input check happens before anything is trained
    key = run_key(cfg, data)
    checkpoints = Path(cfg.ppo.checkpoint_dir) / key
    out = Path(out)
    args = (cfg, {k: str(v) for k, v in inputs.items()}, str(checkpoints), str(out), key, dict(tags or {}))
    with run_lock(checkpoints, cfg.ppo.lock_wait_s, "ppo.lock_wait_s"):  # one writer per run key
        launch(_worker, cfg.ppo.world_size, cfg.device, *args)
    return {k: float(v) for k, v in read_json(out / "summary.json").items()}


def _worker(
    info: DistInfo,
    cfg: HmarlConfig,
    inputs: dict[str, str],
    checkpoints: str,
    out: str,
    key: str,
    extra_tags: dict[str, str],
) -> None:
    """One rank's training; rank 0 also backtests, writes the output folder and logs to the trackers."""
    data = load_training_data(cfg, {k: Path(v) for k, v in inputs.items()})
    tracking = cfg.tracking if info.is_main else cfg.tracking.model_copy(update={"enabled": False})
    trackers = Trackers(Tracker(tracking), TensorBoardTracker(tracking))
    tags = {"step": "train_symbols", "profile": cfg.profile, "run_key": key, **extra_tags}
    t0 = time.perf_counter()
    with trackers.start_run("train_symbols", tags=tags) as tracker:
        tracker.log_params(
            {
                "agent": cfg.agent.model_dump(),
                "ppo": cfg.ppo.model_dump(),
                "env": cfg.env.model_dump(),
                "reward": cfg.reward.model_dump(),
                "seed": cfg.seed,
                "fingerprint": data.fingerprint,
                "fold": data.fold.index,
            }
        )
        result = train(cfg, data, info, Path(checkpoints), tracker if info.is_main else None)
        if not info.is_main:
            return
        evaluation = evaluate(cfg, data, result, info.device)
        # the world size that trained (torchrun's, when it started the ranks), not the requested one
        cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"world_size": info.world_size})})
        summary = _summary(result, evaluation, time.perf_counter() - t0)
        _write_outputs(Path(out), cfg, data, result, evaluation, summary, key, checkpoints)
        tracker.log_metrics({f"final/{k}": v for k, v in summary.items()}, step=result.global_step)
        tracker.log_artifacts(out, "symbols")
    log.info(
        "train_symbols: %d env steps, held-out Sharpe agent %.2f / buy-and-hold %.2f / random %.2f",
        result.global_step,
        summary["test_sharpe_agent"],
        summary["test_sharpe_buy_hold"],
        summary["test_sharpe_random"],
    )


def evaluate(cfg: HmarlConfig, data: TrainingData, result: TrainResult, device: torch.device) -> dict:
    """Backtest on the fold's test bars (never seen by the agents, nor by the SL models / encoder that made
    their inputs): the greedy agent, the sampling agent and the masked random policy (``ppo.eval_envs``
    accounts each), and equal-weight buy-and-hold (entry costs charged)."""
    bars = data.fold.test
    market, tables = data.market(cfg, device), data.tables(cfg, device).restrict(*bars)
    agent = result.agent.eval()
    gen = torch.Generator(device).manual_seed(cfg.seed)
    n = cfg.ppo.eval_envs
    greedy, agreement = eval_agent_policy(agent, tables), None
    if result.float_state is not None:  # int8 heads: the float32 agent's choice on the same observations
        greedy, agreement = agreement_policy(greedy, agent, result.float_state, tables)
    runs = {
        "agent": backtest(market, cfg, bars, greedy, 1, cfg.seed),
        "agent_sampled": backtest(
            market, cfg, bars, eval_agent_policy(agent, tables, False, gen), n, cfg.seed
        ),
        "random": backtest(market, cfg, bars, random_policy(gen), n, cfg.seed),
    }
    out: dict = {"bars": list(bars), "fold": data.fold.index}
    if agreement is not None:
        out["int8_action_agreement"] = agreement[0] / max(agreement[1], 1)
    for name, bt in runs.items():
        shares = np.bincount(bt.executed.reshape(-1), minlength=len(ACTION_NAMES)) / bt.executed.size
        edge, t_stat = bt.timing_edge()
        out[name] = {
            "sharpe": float(bt.sharpe.mean()),
            "total_return": float(bt.total_return.mean()),
            "timing_edge": edge,
            "timing_edge_t": t_stat,
            "executed_shares": dict(zip(ACTION_NAMES, shares.tolist(), strict=True)),
        }
    bh = buy_and_hold(market, cfg, bars).equity
    out["buy_hold"] = {
        "sharpe": float(sharpe_ratio(bh, market.bars_per_year, risk_free(market, bars))),
        "total_return": float(bh[-1] / bh[0] - 1.0),
    }
    return out


def agreement_policy(
    greedy: ObsPolicy, agent: SymbolAgent, float_state: dict[str, torch.Tensor], tables: AgentTables
) -> tuple[ObsPolicy, list[int]]:
    """``greedy`` (the int8 agent's), also counting where the float32 agent (``float_state``) picks the same
    action on the same observation: ``[same, decisions]``, over symbols with more than one allowed action."""
    reference = copy.deepcopy(agent)
    reference.load_state_dict(float_state)
    other, counts = eval_agent_policy(reference, tables), [0, 0]

    def act(obs: Observation) -> torch.Tensor:
        action, free = greedy(obs), obs.mask.sum(-1) > 1
        counts[0] += int(((action == other(obs)) & free).sum())
        counts[1] += int(free.sum())
        return action

    return act, counts


def _summary(result: TrainResult, evaluation: dict, seconds: float) -> dict[str, float]:
    last = result.series[-1] if result.series else {}
    summary = {k: float(last[k]) for k in MANDATORY if k in last}
    summary.update(
        env_steps=float(result.global_step),
        updates=float(len(result.series)),
        sps_mean=float(np.mean([r["SPS"] for r in result.series])) if result.series else 0.0,
        seconds=seconds,
        resumed=float(result.resumed_from is not None),
        entropy_guard_interventions=float(last.get("entropy_guard_interventions_total", 0.0)),
    )
    if "int8_action_agreement" in evaluation:
        summary["int8_action_agreement"] = evaluation["int8_action_agreement"]
    for name in ("agent", "agent_sampled", "random", "buy_hold"):
        summary[f"test_sharpe_{name}"] = evaluation[name]["sharpe"]
        summary[f"test_return_{name}"] = evaluation[name]["total_return"]
    return summary


def _write_outputs(
    out: Path,
    cfg: HmarlConfig,
    data: TrainingData,
    result: TrainResult,
    evaluation: dict,
    summary: dict,
    key: str,
    checkpoints: str,
) -> None:
    out.mkdir(parents=True)
    meta = data.identity
    write_agent(out / "agent.pt", cfg, data, result.agent)
    write_json(
        out / "manifest.json",
        {
            "version": AGENT_VERSION,
            "run_key": key,
            "checkpoint_dir": checkpoints,
            "config": config_dict(cfg),
            "fold": data.fold.to_dict(),
            "env_steps": result.global_step,
            "updates": len(result.series),
            "step_unit": "env steps: every env advances one bar and every symbol agent acts once",
            "resumed_from_update": result.resumed_from,
            "resume_skipped": result.resume_skipped,
            "encoder": cfg.agent.encoder,
            "inputs": {
                "sl_cache": data.sl.manifest.get("fingerprint"),
                "encoder": data.encoder_manifest.get("version"),
            },
            **meta,
        },
    )
    write_json(
        out / "telemetry.json",
        {
            "series": result.series,
            "warm_start": result.warm_start,
            "timing_keys": list(TIMING_KEYS),
            "num_envs": cfg.env.num_envs,
            "num_symbols": len(data.symbols),
            "world_size": cfg.ppo.world_size,
        },
    )
    write_json(out / "evaluation.json", evaluation)
    write_json(out / "summary.json", summary)
