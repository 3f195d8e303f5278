"""The ``encoder:`` section of params.yaml: branches, fusion, masked-forecast pretraining, probes."""

from __future__ import annotations

from pydantic import Field, model_validator

from hmarl.params_base import Section


class BranchesConfig(Section):
    transformer: bool = True
    lstm: bool = True
    cnn: bool = True
    graph: bool = True


class EncoderConfig(Section):
    embed_dim: int = Field(256, ge=16)
    append_sl_priors: bool = True  # last 9 dims of the embedding are the SL probabilities (pass-through)
    branches: BranchesConfig = BranchesConfig()
    d_model: int = Field(32, ge=4)  # width of every branch
    heads: int = Field(4, ge=1)
    scales: list[int] = Field(default_factory=lambda: [1, 2, 4])  # transformer: time pooling per scale
    lstm_hidden: int = Field(32, ge=1)
    cnn_channels: int = Field(32, ge=1)
    cnn_kernel: int = Field(3, ge=1)
    graph_layers: int = Field(2, ge=1)
    graph_top_k: int = Field(8, ge=1)  # edges kept per symbol (strongest positive train correlations)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # pretraining (self-supervised, train bars of each fold only)
    mask_time_prob: float = Field(0.15, ge=0.0, lt=1.0)
    mask_feature_prob: float = Field(0.15, ge=0.0, lt=1.0)
    forecast_k: int = Field(5, ge=1)  # next k bar returns forecast from the embedding
    forecast_weight: float = Field(1.0, ge=0.0)
    # refit a fresh encoder every this many folds (1: every fold); fold k reuses the encoder of fold
    # k - k % refit_every, whose train and validation bars precede fold k's test bars (honest reuse)
    refit_every: int = Field(1, ge=1)
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1)
    batch_bars: int = Field(16, ge=1)  # bars per batch; each bar carries all symbols (graph branch)
    max_bars_per_epoch: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    embed_batch_bars: int = Field(64, ge=1)  # bars per forward pass when building the embedding cache
    # diagnostics
    probe_l2: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])  # chosen on val bars
    probe_max_samples: int = Field(20000, ge=100)
    attribution_bars: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> EncoderConfig:
        if not any(self.branches.model_dump().values()):
            raise ValueError("encoder.branches: at least one branch must be enabled")
        if self.d_model % self.heads:
            raise ValueError(
                f"encoder.d_model ({self.d_model}) must be divisible by encoder.heads ({self.heads})"
            )
        if not self.probe_l2 or min(self.probe_l2) < 0:
            raise ValueError("encoder.probe_l2: need at least one strength, each >= 0")
        if not self.scales or min(self.scales) < 1:
            raise ValueError("encoder.scales: need at least one scale, each >= 1")
        return self
