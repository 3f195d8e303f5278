"""The ``master:`` section of params.yaml: the master agent's network, its MAPPO learner and schedule.

Step counts are **env steps** (as in ``ppo:``); the master decides every ``env.master.interval`` of them.
Imports only pydantic (``hmarl.config`` imports this module without pulling in torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hmarl.params_base import Section


class MasterConfig(Section):
    # network: obs -> hidden[0] (LayerNorm, GELU) -> hidden[1] (GELU) -> 48-way actor; same trunk shape critic
    hidden: tuple[int, int] = (256, 128)
    actor_gain: float = Field(0.01, gt=0.0)  # orthogonal init gain of the actor output: near-uniform start
    # centralized: MAPPO, the critic also sees the joint portfolio state (every symbol's position, P&L and
    # symbol-agent value); independent: IPPO, the critic sees the master's own observation only
    critic: Literal["centralized", "independent"] = "centralized"
    # hierarchical schedule: the symbol agents (models/symbols, trained under the neutral directive) are
    # frozen while the master trains; they act by sampling (or greedily) from their masked policies
    symbol_policy: Literal["sample", "greedy"] = "sample"
    num_envs: int | None = Field(None, ge=1)  # None: env.num_envs
    total_steps: int = Field(20_000, ge=1)
    num_steps: int = Field(64, ge=1)  # env steps per rollout and env
    lr: float = Field(3e-4, gt=0.0)
    anneal_lr: bool = True
    gamma: float = Field(0.99, ge=0.0, le=1.0)  # per env step
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    update_epochs: int = Field(4, ge=1)
    num_minibatches: int = Field(4, ge=1)
    norm_adv: bool = True
    clip_coef: float = Field(0.2, gt=0.0)
    clip_vloss: bool = True
    vf_coef: float = Field(0.5, ge=0.0)
    ent_coef: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    target_kl: float | None = Field(0.03, gt=0.0)
    reward_scale: float = Field(100.0, gt=0.0)  # master rewards are per-bar returns: scale to O(1)
    # divergence guards: a non-finite loss, or a value loss above this, stops the run (last good
    # checkpoint kept)
    max_value_loss: float = Field(1e4, gt=0.0)
    checkpoint_dir: str = "checkpoints/train_master"
    checkpoint_every: int = Field(10, ge=1)  # updates
    # a second run of the same run key waits this long for the first to finish, then stops with an error
    lock_wait_s: float = Field(0.0, ge=0.0)
    threads: int = Field(1, ge=0)  # torch threads (0: torch's default)
    # early stopping (learners/early_stopping.py): every this many updates, and after the last, score the
    # greedy hierarchy on the fold's validation bars (excess Sharpe) and keep the best weights; 0: off
    validate_every: int = Field(0, ge=0)
    eval_envs: int = Field(8, ge=1)  # held-out evaluation: accounts per arm (master vs neutral directive)
    # alternating fine-tuning rounds after the first master phase (0: off). Each round fine-tunes the symbol
    # agents for finetune_symbol_steps env steps with PPO (ppo.*) under the master's directives, then the
    # master for finetune_master_steps env steps with the fine-tuned symbol agents frozen
    alternating_rounds: int = Field(0, ge=0)
    finetune_symbol_steps: int = Field(4096, ge=1)
    finetune_master_steps: int = Field(2048, ge=1)
    finetune_directive: Literal["greedy", "sample"] = "greedy"  # the master's directives while symbols learn
    world_size: int = Field(1, ge=1)  # DDP processes (gloo on CPU, NCCL on CUDA, one GPU each)
