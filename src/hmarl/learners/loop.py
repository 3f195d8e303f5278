"""The outer training loop's pieces both trainers share: seeding a rank, the training simulator, the
checkpoint store and schedule, learning-rate annealing and the latest episode statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from hmarl.config import HmarlConfig
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.learners.checkpoint import CheckpointStore
from hmarl.learners.distributed import DistInfo
from hmarl.runtime import seed_everything, set_determinism


def seed_rank(seed: int, info: DistInfo, threads: int, deterministic: bool, device: torch.device) -> int:
    """Threads and determinism for the process, then every generator seeded; returns this rank's seed
    (ranks differ in envs and samples, never in the initial weights: those come from ``cfg.seed``)."""
    set_determinism(threads, deterministic, device)
    seed = seed + 10_007 * info.rank
    seed_everything(seed)
    return seed


def training_env(
    cfg: HmarlConfig, market: MarketData, bar_range: tuple[int, int], seed: int, num_envs: int | None = None
) -> MarketEnv:
    """The simulator on a fold's train bars; actions are not re-checked (they come from masked policies)."""
    return MarketEnv(
        market,
        cfg.env.model_copy(update={"check_actions": False}),
        cfg.reward,
        num_envs=num_envs,
        bar_range=bar_range,
        min_history=cfg.features.window - 1,
        seed=seed,
    )


def open_store(root: Path | None, info: DistInfo) -> CheckpointStore | None:
    return None if root is None else CheckpointStore(root, info.rank, world_size=info.world_size)


def checkpoint_due(done: int, every: int, num_updates: int) -> bool:
    """After ``done`` complete updates: every ``every`` updates and after the last."""
    return done % every == 0 or done == num_updates


def anneal_lr(
    optimizer: torch.optim.Optimizer, lr: float, update: int, num_updates: int, anneal: bool
) -> float:
    """Linear decay to 0 over the run when ``anneal``; each parameter group scaled by its ``lr_scale``."""
    lr_now = lr * (1.0 - update / num_updates) if anneal else lr
    for group in optimizer.param_groups:
        group["lr"] = lr_now * group.get("lr_scale", 1.0)
    return lr_now


def latest_episodes(env: MarketEnv, episode: dict) -> dict:
    """The simulator's episode statistics when an episode ended since the last call, else ``episode``."""
    ep = env.get_episode_stats()
    return ep if ep.get("episodes", 0) > 0 else episode
