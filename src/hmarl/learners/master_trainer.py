"""MAPPO for the master agent with the symbol agents frozen, top to bottom like a CleanRL script:

    setup -> (resume) -> for each update: collect (symbol agents act under the master's directives)
                                         -> GAE over env steps -> minibatch epochs -> guards -> log
                                         -> checkpoint

Hierarchical schedule: the symbol agents were trained under the neutral directive (train_symbols); here
they are loaded frozen from its output and only the master learns. Divergence guards: a non-finite loss or
a value loss above ``master.max_value_loss`` stops the run with :class:`MasterDivergence` before the
optimizer applies it; checkpoints are written only after complete updates, so the last good one stays.

Under DDP (``master.world_size``) each rank collects its own rollouts (its own env seed) and gradients are
averaged; the KL early stop and the guards use statistics reduced over ranks, so every rank stops alike.
``init_state`` continues a master (alternating fine-tuning rounds, :mod:`hmarl.learners.alternating`).

The update epochs, the clipped objective, the rollout buffer base and the actor-critic wrapper are the
shared PPO engine (:mod:`hmarl.learners.engine`); the master's own parts: the semi-MDP rollout (policy
terms where it decided), MAPPO vs IPPO (the critic's input, fixed when the network is built) and the
divergence guard as the engine's step guard.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import MasterAgent, benchmark_table, joint_width, obs_width
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.market import MarketData
from hmarl.env.spec import Observation
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import StepError
from hmarl.learners import loop
from hmarl.learners.distributed import DistInfo, all_reduce_mean, wrap
from hmarl.learners.early_stopping import EarlyStopping
from hmarl.learners.engine import EpochSettings, StepGuard, explained_variance, ppo_epochs
from hmarl.learners.mappo import MasterBuffer, mappo_loss
from hmarl.learners.policy import MasterActorCritic
from hmarl.learners.ppo import LossCoefs
from hmarl.learners.telemetry import directive_figures, log_master_update

log = logging.getLogger(__name__)


class MasterDivergence(StepError):
    """Training diverged (non-finite or exploding loss); the last good checkpoint is kept."""


@dataclass
class MasterResult:
    master: MasterAgent
    series: list[dict[str, float]]  # one row of metrics per update
    directive_counts: list[list[int]]  # per update: how often each directive was chosen (histogram)
    global_step: int
    resumed_from: int | None
    resume_skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification
    best_update: int | None = None  # early stopping: the update whose weights were kept (None: the last)


def build_master(cfg: HmarlConfig, num_symbols: int, num_regime: int, num_directives: int) -> MasterAgent:
    return MasterAgent(
        cfg.master,
        obs_dim=obs_width(num_regime),
        joint_dim=joint_width(num_symbols),
        num_directives=num_directives,
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------- 1. rollout
def collect(
    env: MarketEnv,
    h: Hierarchy,
    buf: MasterBuffer,
    obs: Observation,
    gen: torch.Generator,
    reward_scale: float,
    counts: torch.Tensor,
) -> Observation:
    policy = MasterActorCritic(h.master)
    for t in range(buf.num_steps):
        mobs, joint = h.master_inputs(obs)
        with torch.no_grad():
            av = policy.get_action_and_value(mobs, joint, generator=gen)
        directive = av.action
        due = obs.master_due
        if bool(due.any()):
            obs = env.set_directive(directive)
        res = env.step(h.symbol_actions(obs, gen))
        valid = ~res.info["reset"]
        buf.obs[t], buf.joint[t], buf.action[t] = mobs, joint, directive
        buf.logprob[t], buf.value[t] = av.pi.log_prob(directive), av.value
        buf.reward[t] = res.master_reward.float() * reward_scale
        buf.due[t] = due & valid
        buf.terminated[t] = res.terminated
        buf.ended[t] = res.terminated | res.truncated
        buf.valid[t] = valid
        counts += torch.bincount(directive[due & valid], minlength=counts.numel())
        obs = res.obs
    return obs


# --------------------------------------------------------------------------- 3. PPO epochs
def ppo_update(
    model: torch.nn.Module,
    master: MasterAgent,
    optimizer: torch.optim.Optimizer,
    buf: MasterBuffer,
    adv: torch.Tensor,
    ret: torch.Tensor,
    coefs: LossCoefs,
    cfg: HmarlConfig,
    gen: torch.Generator,
    where: str,
    info: DistInfo,
) -> dict[str, float]:
    """The shared epochs (:func:`hmarl.learners.engine.ppo_epochs`) over env-step rows with the MAPPO /
    IPPO loss; ``model``: ``master`` itself, or its DDP wrapper (gradients averaged over ranks). The
    divergence guard raises :class:`MasterDivergence` before a bad step."""
    m = cfg.master
    flat = {
        k: v.flatten(0, 1)
        for k, v in {
            "obs": buf.obs,
            "joint": buf.joint,
            "action": buf.action,
            "logprob": buf.logprob,
            "value": buf.value,
            "adv": adv,
            "ret": ret,
            "pw": (buf.due & buf.valid).float(),
            "vw": buf.valid.float(),
        }.items()
    }

    policy = MasterActorCritic(model)

    def minibatch_loss(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = {k: v[idx] for k, v in flat.items()}
        av = policy.get_action_and_value(b["obs"], b["joint"], b["action"])
        return mappo_loss(
            logits=av.logits,
            actions=av.action,
            new_value=av.value,
            old_logprob=b["logprob"],
            old_value=b["value"],
            advantages=b["adv"],
            returns=b["ret"],
            policy_weight=b["pw"],
            value_weight=b["vw"],
            coefs=coefs,
        )

    def epoch_kl(kls: list[torch.Tensor]) -> torch.Tensor:  # the mean in float64
        return torch.tensor(
            float(np.mean([float(k) for k in kls])), dtype=torch.float64, device=buf.obs.device
        )

    settings = EpochSettings(m.update_epochs, m.num_minibatches, m.max_grad_norm, m.target_kl)
    guard = divergence_guard(m.max_value_loss, where, info)
    out = ppo_epochs(
        settings,
        buf.rows,
        minibatch_loss,
        optimizer,
        list(master.parameters()),
        gen,
        gen.device,
        info,
        guard,
        epoch_kl,
    )
    del out["nonfinite_minibatches"]  # always 0: the guard raises instead of skipping
    out["loss_explained_variance"] = explained_variance(ret[buf.valid], buf.value[buf.valid])
    return out


def divergence_guard(max_value_loss: float, where: str, info: DistInfo) -> StepGuard:
    """Raise :class:`MasterDivergence` on a non-finite loss or a value loss above ``max_value_loss`` on any
    rank (every rank trips alike), before the optimizer touches the weights."""

    def guard(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> bool:
        trips = [not bool(torch.isfinite(loss)), float(terms["value_loss"]) > max_value_loss]
        trips = all_reduce_mean(torch.tensor(trips, dtype=torch.float64, device=loss.device), info)
        nonfinite, exploding = (float(x) > 0 for x in trips)
        if nonfinite:
            raise MasterDivergence(f"{where}: non-finite loss ({ {k: float(v) for k, v in terms.items()} })")
        if exploding:
            raise MasterDivergence(
                f"{where}: value loss {float(terms['value_loss']):.4g} exceeds "
                f"master.max_value_loss={max_value_loss:g}"
            )
        return True

    return guard


# --------------------------------------------------------------------------- the training loop
@dataclass(kw_only=True)
class _Run(loop.LoopState):
    """One rank's training: the loop state, the master, the hierarchy it acts in, the directive counts."""

    cfg: HmarlConfig
    master: MasterAgent
    model: torch.nn.Module  # ``master`` or its DDP wrapper
    h: Hierarchy
    buf: MasterBuffer
    obs: Observation
    hist: list[list[int]] = field(default_factory=list)  # per update: how often each directive was chosen
    best: dict | None = None  # early stopping's state restored from a checkpoint


def _setup(
    cfg: HmarlConfig,
    market: MarketData,
    tables: AgentTables,
    symbols: SymbolAgent,
    bar_range: tuple[int, int],
    checkpoint_root: Path | None,
    info: DistInfo,
    init_state: dict[str, torch.Tensor] | None,
) -> _Run:
    """Simulator on the fold's train bars, frozen symbol agents, master, optimizer; resumed when a complete
    checkpoint exists."""
    m, device = cfg.master, market.device
    seed = loop.seed_rank(cfg.seed, info, m.threads, True, device)  # always deterministic kernels on CPU
    env = loop.training_env(cfg, market, bar_range, seed, num_envs=m.num_envs or cfg.env.num_envs)
    symbols.eval().requires_grad_(False)
    master = build_master(cfg, env.num_symbols, market.regime.shape[1], env.num_directives).to(device)
    if init_state is not None:
        master.load_state_dict(init_state)
    model = wrap(master, info)
    h = Hierarchy(
        symbols,
        tables,
        master,
        benchmark_table(market.benchmark, cfg.env.master.interval).to(device),
        symbol_greedy=m.symbol_policy == "greedy",
    )
    optimizer = torch.optim.Adam(master.parameters(), lr=m.lr, eps=1e-5)
    gen = torch.Generator(device).manual_seed(seed)
    buf = MasterBuffer(m.num_steps, env.num_envs, master.obs_dim, master.joint_dim, device)
    num_updates = math.ceil(m.total_steps / m.num_steps)
    store = loop.open_store(checkpoint_root, info)
    obs = env.reset(seed=seed)
    run = _Run(info=info, env=env, optimizer=optimizer, gen=gen, num_updates=num_updates, store=store, cfg=cfg,
               master=master, model=model, h=h, buf=buf, obs=obs)  # fmt: skip
    payload = store.load_latest() if store is not None else None
    if payload is not None:
        _restore(run, payload)
        log.info("train_master: resumed at update %d (env step %d)", run.update, run.global_step)
    return run


def _checkpoint(run: _Run, stopper: EarlyStopping | None) -> dict:
    best = stopper.state() if stopper is not None else None
    return {**run.loop_checkpoint(), "master": run.master.state_dict(), "hist": run.hist, "best": best}


def _restore(run: _Run, payload: dict) -> None:
    run.master.load_state_dict(payload["master"])
    run.restore_loop(payload)
    run.obs = run.env._obs  # the restored simulator's last observation (part of its captured state)
    run.hist = [list(c) for c in payload["hist"]]
    run.best = payload.get("best")


def train(
    cfg: HmarlConfig,
    market: MarketData,
    tables: AgentTables,
    symbols: SymbolAgent,
    bar_range: tuple[int, int],
    checkpoint_root: Path | None = None,
    tracker=None,
    info: DistInfo | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    stopper: EarlyStopping | None = None,
) -> MasterResult:
    """MAPPO over ``bar_range``; with ``stopper`` (learners/early_stopping.py) the master is scored on the
    validation bars every ``master.validate_every`` updates and the best-scoring weights are returned."""
    m, info = cfg.master, info or DistInfo()
    run = _setup(cfg, market, tables, symbols, bar_range, checkpoint_root, info, init_state)
    if stopper is not None:
        stopper.load(run.best)
    for update in range(run.update, run.num_updates):
        metrics, counts = _update(run, update)
        run.hist.append(counts.cpu().tolist())
        if stopper is not None and stopper.due(update + 1, run.num_updates):
            metrics["val_sharpe"] = stopper.observe(run.master, update + 1)
        if tracker is not None:
            log_master_update(tracker, metrics, counts, run.global_step)
        run.finish_update(metrics, m.checkpoint_every, lambda: _checkpoint(run, stopper))
    best_update = None
    if stopper is not None:
        stopper.restore_best(run.master)
        best_update = stopper.best_update
    return MasterResult(
        run.master.eval(), run.series, run.hist, run.global_step, run.resumed_from, run.skipped, best_update
    )


def _update(run: _Run, update: int) -> tuple[dict[str, float], torch.Tensor]:
    """One update: collect -> GAE over env steps -> minibatch epochs (guards raise before a bad step);
    its metrics row and the directive counts."""
    m, env, buf, master = run.cfg.master, run.env, run.buf, run.master
    t0 = time.perf_counter()
    lr_now = loop.anneal_lr(run.optimizer, m.lr, update, run.num_updates, m.anneal_lr)
    coefs = LossCoefs(m.clip_coef, m.clip_vloss, m.vf_coef, m.ent_coef, 0.0, m.norm_adv)

    # ---- 1. collect: symbol agents frozen, the master decides where due
    master.eval()
    counts = torch.zeros(env.num_directives, dtype=torch.int64, device=buf.reward.device)
    run.obs = collect(env, run.h, buf, run.obs, run.gen, m.reward_scale, counts)
    run.global_step += m.num_steps

    # ---- 2. advantages over env steps (policy terms only where the master decided)
    with torch.no_grad():
        next_value = master.value(*run.h.master_inputs(run.obs))
    adv, ret = buf.advantages(next_value, m.gamma, m.gae_lambda)

    # ---- 3. minibatch epochs
    master.train()
    where = f"train_master: update {update + 1}"
    if run.store is not None and run.store.latest_update() is not None:
        where += f" (last good checkpoint: update {run.store.latest_update()} in {run.store.root})"
    losses = ppo_update(
        run.model, master, run.optimizer, buf, adv, ret, coefs, run.cfg, run.gen, where, run.info
    )

    # ---- 4. log
    run.episode = loop.latest_episodes(env, run.episode)
    valid = buf.valid.float()
    metrics = {
        **losses,
        **directive_figures(counts, env.directives),
        "update": float(update + 1),
        "global_step": float(run.global_step),
        "learning_rate": lr_now,
        "master_reward_mean": float((buf.reward * valid).sum() / valid.sum().clamp_min(1.0)) / m.reward_scale,
        "master_decisions": float(counts.sum()),
        "SPS": m.num_steps * env.num_envs * run.info.world_size / (time.perf_counter() - t0),
    }
    for key in ("ep_return_mean", "ep_excess_return_mean", "ep_max_drawdown_mean", "ep_length_mean"):
        if key in run.episode:
            metrics[key] = float(run.episode[key])
    return metrics, counts
