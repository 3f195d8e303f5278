"""Train the symbol agents with PPO on one walk-forward fold's train bars; backtest them on its test bars.

The procedure, the output folder ``model`` and the resume checkpoints: :mod:`hmarl.learners.symbol_stage`.
"""

from __future__ import annotations

from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.learners.symbol_stage import train_symbol_stage

INPUTS = {"store": "data/features", "sl_cache": "data/sl_cache", "encoder": "models/encoder"}
OUTPUTS = {"model": "models/symbols"}
PARAMS = ("seed", "device", "agent", "ppo", "env", "reward", "features")


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    return train_symbol_stage(cfg, inputs, Path(outputs["model"]))
