"""Train the symbol agents with PPO on one walk-forward fold's train bars; backtest them on its test bars.

Output ``model`` (default ``models/symbols``)::

    agent.pt         the final agent: torch.load(weights_only=True); rebuild with hmarl.agents.saved.load_agent
    manifest.json    version, config, data fingerprint, feature names, symbols, fold, env steps, run key
    telemetry.json   the per-update telemetry series (stage5 / gate read it) and the warm-start fit
    evaluation.json  held-out backtest on the fold's test bars: agent vs equal-weight buy-and-hold vs the
                     masked random policy (Sharpe, total return, action shares)

Resume checkpoints live outside the output, in ``ppo.checkpoint_dir/<run key>``: the key hashes the config
(less tracking and bookkeeping keys) and the inputs' identities, so a changed config or new data never
resumes a stale run, and rerunning a killed step continues from its last complete checkpoint.
With ``ppo.world_size > 1`` training runs as that many DDP processes (gloo on CPU, NCCL on GPUs).
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
