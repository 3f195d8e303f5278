"""The ``agent:`` section of params.yaml: the symbol agent's inputs, trunk and actor/critic heads.

Imports only pydantic (``hmarl.config`` imports this module without pulling in torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hmarl.params_base import Section


class AgentConfig(Section):
    # frozen: read the cached embeddings of the pretrain_encoder step (fast);
    # finetune: gather each bar's window from the feature store and run it through the encoder checkpoint
    encoder: Literal["frozen", "finetune"] = "frozen"
    encoder_lr_scale: float = Field(0.1, gt=0.0)  # finetune: encoder learning rate = ppo.lr x this
    # per_symbol: one actor and one critic head per symbol, held as batched weights (one einsum over the
    # symbol axis); shared: one head for all symbols plus a learned symbol embedding (ablation)
    head: Literal["per_symbol", "shared"] = "per_symbol"
    trunk_dim: int = Field(256, ge=4)  # shared input projection: the heads read this many features
    hidden: int = Field(128, ge=1)  # heads: trunk_dim -> hidden -> 7 (actor) and -> 1 (critic)
    symbol_embed_dim: int = Field(16, ge=1)  # shared head only
    # int8: the per-symbol heads' first layers are rounded to an int8 grid when symbol training ends, so
    # everything after (master, backtests, gate, act) runs what a desk runs (hmarl/agents/int8_heads.py)
    head_weights: Literal["float32", "int8"] = "int8"
    use_sl_probs: bool = True  # the SL probability triplet of the bar enters the observation
    actor_gain: float = Field(0.1, gt=0.0)  # orthogonal init gain of the actor output layer (Stage 1)
    critic_gain: float = Field(1.0, gt=0.0)
    # warm start: fit the actor heads to the SL prior's decision boundaries on cached probabilities
    # (states of one masked-random rollout of the training bars) before the first PPO update
    warm_start: bool = False
    warm_start_steps: int = Field(200, ge=1)
    warm_start_lr: float = Field(3e-3, gt=0.0)
    # the SL prior over the 7 actions (sl_prior.py): this share is spread uniformly over allowed actions
    prior_smoothing: float = Field(0.1, ge=0.0, le=1.0)
