"""The ``ppo:`` section of params.yaml: rollout, PPO, the Stage 5 exploration stack, checkpoints, devices.

Step counts (``total_steps``, schedules, warmups, curriculum stages) are **env steps**: in one env step
every env advances one bar and every symbol agent in it acts once, so a symbol agent has seen ``step``
transitions per env when the global step is ``step``. Imports only pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hmarl.params_base import Section


class EntropyScheduleConfig(Section):
    schedule: Literal["hold_then_linear", "constant"] = "hold_then_linear"
    start: float = Field(0.08, ge=0.0)  # coefficient while holding
    end: float = Field(0.03, ge=0.0)  # reached after hold_steps + decay_steps
    hold_steps: int = Field(10_000, ge=0)
    decay_steps: int = Field(40_000, ge=0)
    min_coef: float = Field(0.03, ge=0.0)  # floor of the scheduled coefficient


class AdaptiveEntropyConfig(Section):
    """After warmup the entropy coefficient grows with the shortfall of the measured policy action entropy
    below ``target``: coef x (1 + scale x max(0, target - H) / target)."""

    enabled: bool = True
    target: float = Field(0.55, gt=0.0)  # nats
    scale: float = Field(0.35, ge=0.0)
    warmup_steps: int = Field(4_000, ge=0)


class EntropyGuardConfig(Section):
    """After warmup, a symbol whose policy action entropy over the last rollout fell below ``threshold``
    has its actor output layer shrunk by ``shrink`` (logits move toward uniform); each one is counted."""

    enabled: bool = True
    threshold: float = Field(0.22, ge=0.0)  # nats
    warmup_steps: int = Field(4_000, ge=0)
    shrink: float = Field(0.5, gt=0.0, lt=1.0)


class SLPriorConfig(Section):
    """Auxiliary loss coef x KL(policy || SL prior), the coefficient annealed linearly to final_coef."""

    enabled: bool = True
    coef: float = Field(0.05, ge=0.0)
    final_coef: float = Field(0.0, ge=0.0)
    anneal_steps: int = Field(50_000, ge=1)


class CurriculumConfig(Section):
    """Staged symbol onboarding: from env step ``s`` a fraction ``f`` of the symbols (store order: the
    universe's dollar-volume ranking) is active; inactive symbols hold and add nothing to the loss."""

    enabled: bool = False
    stages: list[tuple[int, float]] = Field(default_factory=lambda: [(0, 0.25), (10_000, 0.5), (20_000, 1.0)])

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumConfig:
        steps = [s for s, _ in self.stages]
        if not self.stages or steps[0] != 0 or steps != sorted(steps):
            raise ValueError(
                "curriculum.stages: need [env_step, fraction] rows, starting at step 0, increasing"
            )
        if any(not 0.0 < f <= 1.0 for _, f in self.stages) or self.stages[-1][1] != 1.0:
            raise ValueError("curriculum.stages: fractions must be in (0, 1] and the last one 1.0")
        return self


class PPOConfig(Section):
    fold: int = -1  # walk-forward fold whose train bars the agents learn on (-1: the last)
    total_steps: int = Field(50_000, ge=1)  # env steps (see the module docstring)
    num_steps: int = Field(128, ge=1)  # rollout length per env; num_envs comes from env.num_envs
    lr: float = Field(3e-4, gt=0.0)
    anneal_lr: bool = True
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    update_epochs: int = Field(4, ge=1)
    num_minibatches: int = Field(4, ge=1)  # over the rollout's (step, env) rows; a row holds every symbol
    norm_adv: bool = True
    clip_coef: float = Field(0.2, gt=0.0)
    clip_vloss: bool = True
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    target_kl: float | None = Field(0.02, gt=0.0)  # None: no early stop
    norm_reward: bool = False  # scale rewards by a running std of the discounted return
    # fixed master directive [risk, cap, mode] (indices into env.master) under which the symbol agents train
    # and are backtested: they are trained before the master exists; None: env.master.default
    directive: list[int] | None = Field(None, min_length=3, max_length=3)
    entropy: EntropyScheduleConfig = EntropyScheduleConfig()
    adaptive_entropy: AdaptiveEntropyConfig = AdaptiveEntropyConfig()
    entropy_guard: EntropyGuardConfig = EntropyGuardConfig()
    sl_prior: SLPriorConfig = SLPriorConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    # checkpoints live outside the step's outputs, keyed by a hash of the config and the input data
    checkpoint_dir: str = "checkpoints/train_symbols"
    checkpoint_every: int = Field(10, ge=1)  # updates
    # a second run of the same run key waits this long for the first to finish, then stops with an error
    lock_wait_s: float = Field(0.0, ge=0.0)
    # devices
    world_size: int = Field(1, ge=1)  # DDP processes (gloo on CPU, NCCL on CUDA, one GPU each)
    bf16: bool = False  # bf16 autocast of the policy on CUDA (no-op on CPU)
    # torch threads per process (0: torch's default); one is robust on a small shared CPU
    threads: int = Field(1, ge=0)
    deterministic: bool = True  # torch.use_deterministic_algorithms on CPU
    progress: bool = True  # console progress bar (only when stderr is a terminal)
    telemetry_window: int = Field(120, ge=1)  # steps of the distinct-actions-per-window check
    eval_envs: int = Field(8, ge=1)  # held-out evaluation: parallel accounts over the fold's test bars
