"""Train the master agent (MAPPO) over the frozen symbol agents; backtest it against the neutral directive.

The procedure, the output folder ``model`` and the resume checkpoints: :mod:`hmarl.learners.master_stage`.
"""

from __future__ import annotations

from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.learners.master_stage import train_master_stage

INPUTS = {
    "store": "data/features",
    "sl_cache": "data/sl_cache",
    "encoder": "models/encoder",
    "symbols": "models/symbols",
}
OUTPUTS = {"model": "models/master"}
PARAMS = ("seed", "device", "agent", "master", "env", "reward")


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    return train_master_stage(cfg, inputs, Path(outputs["model"]))
