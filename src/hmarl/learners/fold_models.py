"""A walk-forward fold's models: the given symbol agents and master when they were trained on the fold,
else trained here with the training steps' own procedures (:mod:`hmarl.learners.symbol_stage`, then
:mod:`hmarl.learners.master_stage`)."""

from __future__ import annotations

import logging
from pathlib import Path

from hmarl.agents.data import TrainingData
from hmarl.config import HmarlConfig
from hmarl.learners.agent_folder import model_manifest, symbol_agent_dir
from hmarl.learners.master_stage import train_master_stage
from hmarl.learners.symbol_stage import train_symbol_stage

log = logging.getLogger(__name__)


def resolve_models(
    cfg: HmarlConfig, data: TrainingData, inputs: dict[str, Path], out: Path
) -> tuple[Path, Path, dict]:
    """``(symbol agents folder, master folder, {folder role: manifest})`` of this fold, training what is
    missing into ``out`` (``symbols/``, ``master/``). A master trained here is trained over the symbol
    agents of this fold; models of other data are refused (DataError)."""
    k = data.fold.index
    sym_dir, master_dir = Path(inputs["symbols"]), Path(inputs["master"])
    sym = model_manifest(sym_dir, "agent.pt", data)
    master = model_manifest(master_dir, "master.pt", data)
    upstream = {key: inputs[key] for key in ("store", "sl_cache", "encoder")}
    if sym["fold"] != k:
        log.info("walk_forward: %s holds fold %s; training fold %d here", sym_dir, sym["fold"], k)
        sym_dir = out / "symbols"
        train_symbol_stage(cfg, upstream, sym_dir)
        sym = model_manifest(sym_dir, "agent.pt", data)
    if sym_dir != Path(inputs["symbols"]) or master["fold"] != k:
        master_dir = out / "master"
        train_master_stage(cfg, {**upstream, "symbols": sym_dir}, master_dir)
        master = model_manifest(master_dir, "master.pt", data)
    return symbol_agent_dir(sym_dir, master_dir), master_dir, {"symbols": sym, "master": master}
