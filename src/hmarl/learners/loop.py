"""The outer training loop's pieces both trainers share: seeding a rank, the training simulator, the loop
state with its checkpoint entries and schedule, learning-rate annealing and the latest episode statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hmarl.config import HmarlConfig
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.learners.checkpoint import CheckpointStore, capture_state, restore_state, rng_state, set_rng_state
from hmarl.learners.distributed import DistInfo, barrier
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


@dataclass(kw_only=True)
class LoopState:
    """What every trainer's loop carries: the simulator, optimizer, sample generator and checkpoint store,
    and the progress a checkpoint holds with them (``update`` onwards). Trainers extend it with their
    networks and extras, and their checkpoints with those entries."""

    info: DistInfo
    env: MarketEnv
    optimizer: torch.optim.Optimizer
    gen: torch.Generator
    num_updates: int
    store: CheckpointStore | None
    update: int = 0  # complete updates
    global_step: int = 0  # env steps
    series: list[dict[str, float]] = field(default_factory=list)  # one row of metrics per update
    episode: dict = field(default_factory=dict)  # the latest episode statistics
    resumed_from: int | None = None  # update the run resumed at (None: fresh start)

    def loop_checkpoint(self) -> dict:
        return {
            "update": self.update,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "sample_generator": self.gen.get_state(),
            "env": capture_state(self.env),
            "series": self.series,
            "episode": self.episode,
        }

    def restore_loop(self, payload: dict) -> None:
        self.optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        self.gen.set_state(payload["sample_generator"])
        restore_state(self.env, payload["env"])
        self.update, self.global_step = int(payload["update"]), int(payload["global_step"])
        self.series, self.episode = list(payload["series"]), dict(payload["episode"])
        self.resumed_from = self.update

    def finish_update(self, metrics: dict[str, float], every: int, checkpoint) -> None:
        """Record the update's metrics; save ``checkpoint()`` (atomic, complete) every ``every`` updates
        and after the last."""
        self.series.append(metrics)
        self.update += 1
        if self.store is not None and (self.update % every == 0 or self.update == self.num_updates):
            self.store.save(self.update, checkpoint(), barrier=lambda: barrier(self.info))

    @property
    def skipped(self) -> list[str]:
        """Newer checkpoints that failed verification when the run resumed."""
        return self.store.skipped if self.store is not None else []


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
