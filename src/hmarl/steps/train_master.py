"""Train the master agent (MAPPO) over the frozen symbol agents; backtest it against the neutral directive.

Output ``model`` (default ``models/master``)::

    master.pt        the master: torch.load(weights_only=True); rebuild with hmarl.agents.saved_master
    manifest.json    version, config, data fingerprint, symbols, feature names, fold, env steps, run key
    telemetry.json   the per-update series and the directive histogram of every update
    evaluation.json  held-out backtest on the fold's test bars: the same symbol agents under the trained
                     master vs under the fixed neutral directive (max drawdown, total return, Sharpe)
    symbols/         only with master.alternating_rounds > 0: the symbol agents fine-tuned in the rounds
                     (agent.pt in train_symbols' format, manifest.json, telemetry.json); they are the
                     symbol agents of this master (evaluation.json, walk-forward, promote use them)

Schedule (hmarl.learners.alternating): the master over the frozen symbol agents, then the optional
alternating rounds. Resume checkpoints live in ``master.checkpoint_dir/<run key>`` (config + input
identities, as in train_symbols; the rounds are part of the config): rerunning a killed step continues
from its last complete checkpoint. With ``master.world_size > 1`` training runs as that many DDP
processes (gloo on CPU, NCCL on GPUs); rank 0 evaluates and writes the outputs.
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
