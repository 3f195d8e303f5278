"""Trained-model folders as the training steps write them and later steps read them.

``models/symbols`` (train_symbols: ``agent.pt`` + ``manifest.json``), ``models/master`` (train_master:
``master.pt`` + ``manifest.json``, and ``symbols/`` when the alternating rounds fine-tuned the symbol agents).
Walk-forward, promotion and the master's training read them here, so a folder of other data or another fold
is refused one way.
"""

from __future__ import annotations

from pathlib import Path

from hmarl.agents.data import TrainingData, load_training_data
from hmarl.agents.params import AgentConfig
from hmarl.agents.saved import load_agent, save_agent
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.errors import DataError
from hmarl.safe_load import read_document


def write_agent(path: Path, cfg: HmarlConfig, data: TrainingData, agent: SymbolAgent) -> None:
    """``agent.pt`` (loads with hmarl.agents.saved.load_agent; train_master writes fine-tuned ones too)."""
    encoder_info = (
        {"hparams": data.encoder_manifest["hparams"], "window": cfg.features.window}
        if agent.encoder is not None
        else None
    )
    save_agent(path, agent, agent.state_dict(), encoder=encoder_info, **data.identity)


def symbol_agent_dir(symbols: Path, master: Path) -> Path:
    """The symbol agents of the master in ``master``: the ones it fine-tuned (``master/symbols``) when the
    alternating rounds wrote them, else the train_symbols folder it was trained over."""
    return master / "symbols" if (master / "symbols" / "agent.pt").is_file() else symbols


def load_symbol_agents(cfg: HmarlConfig, inputs: dict[str, Path]):
    """``(cfg, data, agent)``: training data of the symbol agents' fold (``inputs["symbols"]``) and the
    frozen symbol agents, cross-checked; ``cfg.agent`` is the agents' own (the tables must match how they
    were trained: cached embeddings or windows)."""
    sym_dir = Path(inputs["symbols"])
    if not (sym_dir / "agent.pt").exists():
        raise DataError(f"{sym_dir}: not a symbol-agent folder (agent.pt missing); run train_symbols")
    agent, meta = load_agent(sym_dir / "agent.pt")
    cfg = cfg.model_copy(update={"agent": AgentConfig(**meta["agent"])})
    data = load_training_data(cfg, inputs)
    if meta["fingerprint"] != data.fingerprint:
        raise DataError(
            f"{sym_dir}: symbol agents trained on data {meta['fingerprint']!r}, the feature store holds "
            f"{data.fingerprint!r}; rerun train_symbols"
        )
    if meta["symbols"] != data.symbols:
        raise DataError(f"{sym_dir}: the symbol agents' symbols differ from the feature store's")
    if meta["fold"] != data.fold.index:
        raise DataError(
            f"{sym_dir}: symbol agents trained on fold {meta['fold']}, ppo.fold selects {data.fold.index}"
        )
    return cfg, data, agent


def model_manifest(folder: Path, weights: str, data: TrainingData) -> dict:
    """The manifest of a trained-model folder, refused unless it describes this data."""
    if not (folder / weights).exists() or not (folder / "manifest.json").exists():
        raise DataError(f"{folder}: not a trained-model folder ({weights} or manifest.json missing)")
    manifest = read_document(folder / "manifest.json")
    for key, want in data.identity.items():
        if key != "fold" and manifest.get(key) != want:
            raise DataError(
                f"{folder}: trained on other data ({key} {_short(manifest.get(key))} differs from the "
                f"feature store's {_short(want)}); retrain it on this data"
            )
    return manifest


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
