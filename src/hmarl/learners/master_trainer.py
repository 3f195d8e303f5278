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
from hmarl.learners.checkpoint import CheckpointStore, capture_state, restore_state, rng_state, set_rng_state
from hmarl.learners.distributed import DistInfo, all_reduce_mean, barrier, wrap
from hmarl.learners.engine import EpochSettings, StepGuard, explained_variance, ppo_epochs
from hmarl.learners.mappo import MasterBuffer, mappo_loss
from hmarl.learners.policy import MasterActorCritic
from hmarl.learners.ppo import LossCoefs
from hmarl.runtime import seed_everything, set_determinism

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


def directive_figures(counts: torch.Tensor, table: torch.Tensor) -> dict[str, float]:
    """Entropy of the chosen directives and the mean risk multiplier / cap / open limit they set."""
    total = float(counts.sum())
    if total == 0:
        return {}
    p = counts.double() / total
    nz = p[p > 0]
    mean = (p.unsqueeze(1) * table.double().cpu()).sum(0)
    return {
        "master_directive_entropy": float(-(nz * nz.log()).sum()),
        "master_risk_mean": float(mean[0]),
        "master_cap_mean": float(mean[1]),
        "master_open_limit_mean": float(mean[2]),
    }


# --------------------------------------------------------------------------- the training loop
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
) -> MasterResult:
    m, info = cfg.master, info or DistInfo()
    device = market.device
    set_determinism(m.threads, True, device)  # always deterministic kernels on CPU
    seed = cfg.seed + 10_007 * info.rank  # ranks differ in envs and samples, never in the initial weights
    seed_everything(seed)

    # ---- setup: simulator on the fold's train bars, frozen symbol agents, master, optimizer
    env = MarketEnv(
        market,
        cfg.env.model_copy(update={"check_actions": False}),
        cfg.reward,
        num_envs=m.num_envs or cfg.env.num_envs,
        bar_range=bar_range,
        min_history=cfg.features.window - 1,
        seed=seed,
    )
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
    store = (
        None
        if checkpoint_root is None
        else CheckpointStore(checkpoint_root, info.rank, world_size=info.world_size)
    )
    obs = env.reset(seed=seed)
    start_update, global_step, series, hist, episode, resumed_from = 0, 0, [], [], {}, None

    # ---- resume from the latest complete checkpoint
    payload = store.load_latest() if store is not None else None
    if payload is not None:
        master.load_state_dict(payload["master"])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        gen.set_state(payload["sample_generator"])
        restore_state(env, payload["env"])
        obs = env._obs  # the restored simulator's last observation (part of its captured state)
        start_update, global_step = int(payload["update"]), int(payload["global_step"])
        series, hist, episode = (
            list(payload["series"]),
            [list(c) for c in payload["hist"]],
            dict(payload["episode"]),
        )
        resumed_from = start_update
        log.info("train_master: resumed at update %d (env step %d)", start_update, global_step)

    for update in range(start_update, num_updates):
        t0 = time.perf_counter()
        lr_now = m.lr * (1.0 - update / num_updates) if m.anneal_lr else m.lr
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        coefs = LossCoefs(m.clip_coef, m.clip_vloss, m.vf_coef, m.ent_coef, 0.0, m.norm_adv)

        # ---- 1. collect: symbol agents frozen, the master decides where due
        master.eval()
        counts = torch.zeros(env.num_directives, dtype=torch.int64, device=device)
        obs = collect(env, h, buf, obs, gen, m.reward_scale, counts)
        global_step += m.num_steps

        # ---- 2. advantages over env steps (policy terms only where the master decided)
        with torch.no_grad():
            next_value = master.value(*h.master_inputs(obs))
        adv, ret = buf.advantages(next_value, m.gamma, m.gae_lambda)

        # ---- 3. minibatch epochs (guards raise before a bad step)
        master.train()
        where = f"train_master: update {update + 1}"
        if store is not None and store.latest_update() is not None:
            where += f" (last good checkpoint: update {store.latest_update()} in {store.root})"
        losses = ppo_update(model, master, optimizer, buf, adv, ret, coefs, cfg, gen, where, info)

        # ---- 4. log
        ep = env.get_episode_stats()
        if ep.get("episodes", 0) > 0:
            episode = ep
        valid = buf.valid.float()
        metrics = {
            **losses,
            **directive_figures(counts, env.directives),
            "update": float(update + 1),
            "global_step": float(global_step),
            "learning_rate": lr_now,
            "master_reward_mean": float((buf.reward * valid).sum() / valid.sum().clamp_min(1.0))
            / m.reward_scale,
            "master_decisions": float(counts.sum()),
            "SPS": m.num_steps * env.num_envs * info.world_size / (time.perf_counter() - t0),
        }
        for key in ("ep_return_mean", "ep_excess_return_mean", "ep_max_drawdown_mean", "ep_length_mean"):
            if key in episode:
                metrics[key] = float(episode[key])
        series.append(metrics)
        hist.append(counts.cpu().tolist())
        if tracker is not None:
            log_master_update(tracker, metrics, counts, global_step)

        # ---- 5. checkpoint (atomic, complete)
        if store is not None and ((update + 1) % m.checkpoint_every == 0 or update + 1 == num_updates):
            store.save(
                update + 1,
                {
                    "update": update + 1,
                    "global_step": global_step,
                    "master": master.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(),
                    "sample_generator": gen.get_state(),
                    "env": capture_state(env),
                    "series": series,
                    "hist": hist,
                    "episode": episode,
                },
                barrier=lambda: barrier(info),
            )
    skipped = store.skipped if store is not None else []
    return MasterResult(master.eval(), series, hist, global_step, resumed_from, skipped)


def log_master_update(tracker, metrics: dict[str, float], counts: torch.Tensor, step: int) -> None:
    """TensorBoard ``charts/master_*`` / ``losses/master_*`` and MLflow metrics; the directive histogram."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("loss_"):
            out[f"losses/master_{k[5:]}"] = v
        elif k.startswith("master_"):
            out[f"charts/{k}"] = v
        else:
            out[f"charts/master_{k}"] = v
    tracker.log_metrics(out, step=step)
    hist = getattr(tracker, "log_histogram", None)
    if hist is not None:
        ids = np.repeat(np.arange(counts.numel()), counts.cpu().numpy())
        if ids.size:
            hist("charts/master_directive", ids, step=step, bins=np.arange(counts.numel() + 1) - 0.5)
