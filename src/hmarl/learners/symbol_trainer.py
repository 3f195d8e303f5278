"""PPO for the symbol agents, top to bottom like a CleanRL script:

    setup -> (resume | warm start) -> for each update: collect -> GAE -> minibatch epochs
                                                      -> exploration stack -> log -> checkpoint

One rollout is ``ppo.num_steps`` env steps of ``env.num_envs`` accounts, each with every symbol agent
acting; an agent-step is one (step, env, symbol). Minibatches are (step, env) rows with all their symbols,
so the per-symbol heads run as one batched product. Under DDP each rank collects its own rollout (its own
env seed) and gradients are averaged; everything that changes the model besides the optimizer step (the
KL early stop, the entropy guard) uses statistics averaged over ranks.

The update epochs, the clipped objective, the rollout buffer base and the actor-critic wrapper are the
shared PPO engine (:mod:`hmarl.learners.engine`, :mod:`~hmarl.learners.ppo`, :mod:`~hmarl.learners.rollout`,
:mod:`~hmarl.learners.policy`); what is the symbol agents' own comes in as hooks: the KL-to-SL-prior loss
term, the exploration stack (entropy schedule, adaptive bonus, guard) and skipping a non-finite minibatch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hmarl.agents.data import TrainingData
from hmarl.agents.inputs import AgentTables, PolicyObs, compact
from hmarl.agents.int8_heads import quantize_heads_
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.learners import loop
from hmarl.learners.collect import Director, agent_policy, collect, sync
from hmarl.learners.curriculum import active_symbols
from hmarl.learners.distributed import DistInfo, all_reduce_mean, wrap
from hmarl.learners.engine import EpochSettings, explained_variance, ppo_epochs, skip_nonfinite
from hmarl.learners.entropy import EntropyController
from hmarl.learners.normalize import RewardScaler
from hmarl.learners.policy import SymbolActorCritic
from hmarl.learners.ppo import LossCoefs, ppo_loss
from hmarl.learners.rollout import RolloutBuffer
from hmarl.learners.sl_prior import action_prior, prior_coef
from hmarl.learners.telemetry import log_update, progress_bar, rollout_telemetry, update_metrics
from hmarl.learners.warm_start import warm_start

log = logging.getLogger(__name__)

TIMING_KEYS = ("SPS", "time_env", "time_policy", "time_update", "seconds")


@dataclass
class TrainResult:
    agent: SymbolAgent
    series: list[dict[str, float]]  # one row of metrics per update
    global_step: int
    resumed_from: int | None  # update the run resumed at (None: fresh start)
    warm_start: dict[str, float] = field(default_factory=dict)
    # agent.head_weights int8: the trained weights before rounding (to measure what rounding changed)
    float_state: dict[str, torch.Tensor] | None = None
    resume_skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification


# --------------------------------------------------------------------------- setup helpers
def build_agent(cfg: HmarlConfig, data: TrainingData, device: torch.device) -> SymbolAgent:
    encoder = data.encoder() if cfg.agent.encoder == "finetune" else None
    market_dim = encoder.embed_dim if encoder is not None else data.embed_dim
    agent = SymbolAgent(
        cfg.agent,
        num_symbols=len(data.symbols),
        market_dim=market_dim,
        env_dim=data.env_dim,
        counts_scale=float(cfg.env.diversity_window),
        encoder=encoder,
        seed=cfg.seed,
    )
    return agent.to(device)


def build_optimizer(agent: SymbolAgent, cfg: HmarlConfig) -> torch.optim.Optimizer:
    enc = {id(p) for p in agent.encoder.parameters()} if agent.encoder is not None else set()
    groups = [{"params": [p for p in agent.parameters() if id(p) not in enc], "lr_scale": 1.0}]
    if enc:
        groups.append({"params": list(agent.encoder.parameters()), "lr_scale": cfg.agent.encoder_lr_scale})
    return torch.optim.Adam(groups, lr=cfg.ppo.lr, eps=1e-5)


def autocast(cfg: HmarlConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast of the policy on CUDA when ``ppo.bf16``; a no-op elsewhere."""
    if cfg.ppo.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- 3. PPO epochs
def ppo_update(
    model: torch.nn.Module,
    agent: SymbolAgent,
    optimizer: torch.optim.Optimizer,
    buf: RolloutBuffer,
    tables: AgentTables,
    adv: torch.Tensor,
    ret: torch.Tensor,
    active: torch.Tensor,
    coefs: LossCoefs,
    cfg: HmarlConfig,
    gen: torch.Generator,
    info: DistInfo,
    amp: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """The shared epochs (:func:`hmarl.learners.engine.ppo_epochs`) over (step, env) rows with all their
    symbols; the loss adds the KL-to-SL-prior term; a non-finite minibatch is skipped."""
    p = cfg.ppo
    weight_all = (buf.valid.flatten().unsqueeze(1) & active.unsqueeze(0)).float()  # (rows, S)
    flat = {
        k: t.flatten(0, 1)
        for k, t in (
            ("action", buf.action),
            ("logprob", buf.logprob),
            ("value", buf.value),
            ("adv", adv),
            ("ret", ret),
        )
    }

    policy = SymbolActorCritic(model, tables, amp)

    def minibatch_loss(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        obs = buf.observations(rows)
        av = policy.get_action_and_value(obs, flat["action"][rows])
        log_prior = (
            action_prior(tables.sl_probs(obs.bar), obs.mask, cfg.agent.prior_smoothing)
            if coefs.sl_kl > 0
            else None
        )
        return ppo_loss(
            logits=av.logits,
            mask=obs.mask,
            actions=av.action,
            new_value=av.value,
            old_logprob=flat["logprob"][rows],
            old_value=flat["value"][rows],
            advantages=flat["adv"][rows],
            returns=flat["ret"][rows],
            weight=weight_all[rows],
            log_prior=log_prior,
            coefs=coefs,
        )

    settings = EpochSettings(p.update_epochs, p.num_minibatches, p.max_grad_norm, p.target_kl)
    params = [q for q in agent.parameters() if q.requires_grad]
    device = buf.reward.device
    out = ppo_epochs(
        settings, buf.rows, minibatch_loss, optimizer, params, gen, device, info, skip_nonfinite(info)
    )
    valid = weight_all.view_as(buf.value) > 0
    out["loss_explained_variance"] = explained_variance(ret[valid], buf.value[valid])
    return out


# --------------------------------------------------------------------------- the training loop
@dataclass(kw_only=True)
class _Run(loop.LoopState):
    """One rank's training: the loop state, the agent and its exploration stack."""

    cfg: HmarlConfig
    seed: int
    tables: AgentTables
    agent: SymbolAgent
    model: torch.nn.Module  # ``agent`` or its DDP wrapper
    entropy: EntropyController
    scaler: RewardScaler | None
    buf: RolloutBuffer
    amp: contextlib.AbstractContextManager
    obs: PolicyObs
    warm: dict[str, float] = field(default_factory=dict)


def _setup(
    cfg: HmarlConfig,
    data: TrainingData,
    info: DistInfo,
    checkpoint_root: Path | None,
    init_state: dict[str, torch.Tensor] | None,
) -> _Run:
    """Simulator on the fold's train bars, agent, optimizer, exploration stack, rollout buffer."""
    p, device = cfg.ppo, info.device
    seed = loop.seed_rank(cfg.seed, info, p.threads, p.deterministic, device)
    tables = data.tables(cfg, device).restrict(*data.fold.train)
    env = loop.training_env(cfg, data.market(cfg, device), data.fold.train, seed)
    agent = build_agent(cfg, data, device)
    if init_state is not None:
        agent.load_state_dict(init_state)
    model = wrap(agent, info)
    optimizer = build_optimizer(agent, cfg)
    entropy = EntropyController(p.entropy, p.adaptive_entropy, p.entropy_guard)
    scaler = RewardScaler((env.num_envs, env.num_symbols), p.gamma, device) if p.norm_reward else None
    gen = torch.Generator(device).manual_seed(seed)
    buf = RolloutBuffer(p.num_steps, env.num_envs, env.num_symbols, data.env_dim, device)
    amp = autocast(cfg, device)
    num_updates = math.ceil(p.total_steps / p.num_steps)
    store = loop.open_store(checkpoint_root, info)
    obs = compact(env.reset(seed=seed))
    run = _Run(info=info, env=env, optimizer=optimizer, gen=gen, num_updates=num_updates, store=store, cfg=cfg,
               seed=seed, tables=tables, agent=agent, model=model, entropy=entropy, scaler=scaler, buf=buf,
               amp=amp, obs=obs)  # fmt: skip
    payload = store.load_latest() if store is not None else None
    if payload is not None:
        _restore(run, payload)
        log.info("train_symbols: resumed at update %d (env step %d)", run.update, run.global_step)
    elif cfg.agent.warm_start and init_state is None:
        run.warm = warm_start(agent, env, tables, buf, obs, gen, cfg, info)
        run.obs = compact(env.reset(seed=seed))
        log.info("train_symbols: warm start %s", run.warm)
    return run


def _checkpoint(run: _Run) -> dict:
    return {
        **run.loop_checkpoint(),
        "agent": run.agent.state_dict(),
        "entropy": run.entropy.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "obs": list(run.obs),
        "warm_start": run.warm,
    }


def _restore(run: _Run, payload: dict) -> None:
    run.agent.load_state_dict(payload["agent"])
    run.entropy.load_state_dict(payload["entropy"])
    if run.scaler is not None:
        run.scaler.load_state_dict(payload["scaler"])
    run.restore_loop(payload)
    run.obs = PolicyObs(*(t.to(run.info.device) for t in payload["obs"]))
    run.warm = dict(payload["warm_start"])


def train(
    cfg: HmarlConfig,
    data: TrainingData,
    info: DistInfo,
    checkpoint_root: Path | None = None,
    tracker=None,
    init_state: dict[str, torch.Tensor] | None = None,
    directed: Callable[[SymbolAgent, AgentTables, torch.Generator], Director] | None = None,
) -> TrainResult:
    """``init_state``: start from these weights instead of a warm start (fine-tuning). ``directed``: the
    master for alternating rounds, ``(agent, tables, generator) -> director`` built per rollout (its view
    of the symbol agents follows their updates); it sets the directive wherever it is due."""
    run = _setup(cfg, data, info, checkpoint_root, init_state)
    p, weights = cfg.ppo, cfg.reward.weight_vector()
    bar = progress_bar(run.num_updates, run.update, p.progress and info.is_main)
    for update in range(run.update, run.num_updates):
        metrics, executed = _update(run, update, directed)
        if tracker is not None:
            log_update(tracker, metrics, weights, executed, run.global_step)
        bar.set_postfix(
            SPS=f"{metrics['SPS']:.3g}",
            ent=f"{metrics['policy_action_entropy_mean']:.2f}",
            ret=f"{metrics.get('ep_return_mean', float('nan')):+.3f}",
            kl=f"{metrics.get('loss_approx_kl', float('nan')):.3f}",
            refresh=False,
        )
        bar.update(1)
        run.finish_update(metrics, p.checkpoint_every, lambda: _checkpoint(run))
    bar.close()
    float_state = None
    if cfg.agent.head_weights == "int8":  # after the last checkpoint: a resumed run rounds the same weights
        float_state = {k: v.detach().clone() for k, v in run.agent.state_dict().items()}
        log.info("train_symbols: heads rounded to int8, largest weight change %s", quantize_heads_(run.agent))
    return TrainResult(
        run.agent, run.series, run.global_step, run.resumed_from, run.warm, float_state, run.skipped
    )


def _update(run: _Run, update: int, directed) -> tuple[dict[str, float], torch.Tensor]:
    """One update: collect -> GAE -> minibatch epochs -> exploration stack; its metrics row and the
    executed actions of the active symbols (for the tracker)."""
    p, agent, buf, device = run.cfg.ppo, run.agent, run.buf, run.info.device
    t_start = time.perf_counter()
    timers = {"env": 0.0, "policy": 0.0, "update": 0.0}
    lr_now = loop.anneal_lr(run.optimizer, p.lr, update, run.num_updates, p.anneal_lr)
    active = active_symbols(run.global_step, p.curriculum, run.env.num_symbols, device)
    step = run.global_step
    coefs = LossCoefs(p.clip_coef, p.clip_vloss, p.vf_coef, run.entropy.coef(step),
                      prior_coef(step, p.sl_prior), p.norm_adv)  # fmt: skip

    # ---- 1. collect a rollout
    agent.eval()
    director = directed(agent, run.tables, run.gen) if directed is not None else None
    act = agent_policy(agent, run.tables, run.gen, active)
    run.obs, sums = collect(run.env, act, buf, run.obs, timers, run.amp, run.scaler, director)
    run.global_step += p.num_steps

    # ---- 2. advantages
    t_update = time.perf_counter()
    with torch.no_grad(), run.amp:
        next_value = agent.value(run.obs, run.tables).float()
    adv, ret = buf.advantages(next_value, p.gamma, p.gae_lambda)

    # ---- 3. minibatch epochs of the clipped objective
    agent.train()
    losses = ppo_update(run.model, agent, run.optimizer, buf, run.tables, adv, ret, active, coefs, run.cfg,
                        run.gen, run.info, run.amp)  # fmt: skip
    sync(device)
    timers["update"] = time.perf_counter() - t_update

    # ---- 4. exploration stack, 5. log
    figures, hit = _exploration(run, active)
    run.episode = loop.latest_episodes(run.env, run.episode)
    elapsed = time.perf_counter() - t_start
    metrics = update_metrics(
        figures, sums, losses, run.episode, buf, timers, elapsed, run.cfg.reward.weight_vector()
    )
    metrics.update(
        update=float(update + 1),
        global_step=float(run.global_step),
        learning_rate=lr_now,
        entropy_coef=coefs.ent,
        sl_prior_coef=coefs.sl_kl,
        active_symbols=float(active.sum()),
        entropy_guard_interventions=float(hit.sum()),
        entropy_guard_interventions_total=float(run.entropy.interventions),
        SPS=p.num_steps * run.env.num_envs * run.env.num_symbols * run.info.world_size / elapsed,
    )
    return metrics, buf.executed[..., active]


def _exploration(run: _Run, active: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Measure the policy's action entropy (averaged over ranks), adapt the bonus, guard: shrink the actor
    of every symbol below the guard's threshold. The rollout telemetry figures and the guard's hits."""
    p, buf, device = run.cfg.ppo, run.buf, run.info.device
    figures, per_symbol = rollout_telemetry(
        buf.action[..., active], buf.executed[..., active], p.telemetry_window
    )
    measured = all_reduce_mean(torch.tensor([figures["policy_action_entropy_mean"]], device=device), run.info)
    per_symbol_all = torch.full((run.env.num_symbols,), float("inf"), device=device)
    per_symbol_all[active] = per_symbol.to(device)
    per_symbol_all = all_reduce_mean(per_symbol_all, run.info)
    hit = run.entropy.observe(run.global_step, float(measured), per_symbol_all)
    if bool(hit.any()):
        run.agent.shrink_actor(hit, p.entropy_guard.shrink)
    return figures, hit
