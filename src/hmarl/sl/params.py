"""The ``sl:`` section of params.yaml: labels, the three classifiers, and how they are trained."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hmarl.params_base import Section


class SLModelParams(Section):
    hidden: int = Field(32, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class SLConfig(Section):
    # next-bar direction: return < down_threshold -> down, > up_threshold -> up, else flat. The return is
    # the close-to-close log return over features.label_horizon, divided by the trailing volatility
    # (threshold_unit: volatility; so a random walk with volatility clusters has nothing to predict) or
    # taken as is (threshold_unit: return)
    threshold_unit: Literal["volatility", "return"] = "volatility"
    down_threshold: float = -0.3
    up_threshold: float = 0.3
    vol_window: int = Field(20, ge=2)  # bars of the trailing volatility (std of one-bar log returns)
    mlp: SLModelParams = SLModelParams(hidden=64, layers=2)
    lstm: SLModelParams = SLModelParams(hidden=32)
    gru: SLModelParams = SLModelParams(hidden=32)
    inner_folds: int = Field(4, ge=2)  # purged K-fold cross-fitting inside the first fold's train range
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)  # epochs without validation improvement before stopping
    batch_size: int = Field(512, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    max_samples_per_epoch: int | None = Field(None, ge=1)  # None: every (bar, symbol) pair each epoch
    calibrate: bool = True  # temperature scaling on the fold's validation bars
    predict_batch: int = Field(8192, ge=1)
    # torch intra-op CPU threads while this step runs (0: torch's default). These models are tiny: on a
    # 2-core box one thread trained the smoke cache 4-15x faster than two (thread sync dominates)
    num_threads: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SLConfig:
        if not self.down_threshold < self.up_threshold:
            raise ValueError(
                f"sl.down_threshold ({self.down_threshold}) must be below sl.up_threshold ({self.up_threshold})"
            )
        return self
