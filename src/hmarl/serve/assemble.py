"""Writing a model bundle (the folder :func:`hmarl.serve.bundle.load_bundle` reads) from the pipeline's outputs:
promotion registers what :func:`assemble_bundle` writes.

Layout::

    features/   meta.json + norm.npz of the feature store (no feature arrays)
    sl_cache/   manifest.json + checkpoints/<model>/fold_<k>.pt of the model's fold (no probabilities)
    encoder/    manifest.json + the fold's encoder checkpoint (no embeddings)
    symbols/    agent.pt + manifest.json (from train_master's ``symbols/`` when the master fine-tuned them)
    master/     master.pt + manifest.json (the config the model was trained with)
    gate.json   the gate verdict      params.yaml   the resolved params of this run
    manifest.json   bundle version, data fingerprint, fold, symbols, features, component versions, gate
                    decision, and the run keys of the training steps
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

import hmarl
from hmarl.config import HmarlConfig, config_dict
from hmarl.errors import DataError
from hmarl.io import read_json, write_json, write_text
from hmarl.learners.agent_folder import symbol_agent_dir
from hmarl.safe_load import read_document
from hmarl.serve.bundle import load_bundle

BUNDLE_VERSION = 1


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise DataError(f"{src}: missing (needed in the model bundle)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def assemble_bundle(cfg: HmarlConfig, inputs: dict[str, Path], out: Path, verdict: dict) -> dict:
    """Write the bundle into the new folder ``out``; returns its manifest. The pieces must describe one
    model (same data fingerprint, symbols and fold), which :func:`hmarl.serve.bundle.load_bundle` verifies."""
    store, sl, enc = Path(inputs["store"]), Path(inputs["sl_cache"]), Path(inputs["encoder"])
    master = Path(inputs["master"])
    symbols = symbol_agent_dir(Path(inputs["symbols"]), master)
    master_manifest = (
        read_document(master / "manifest.json") if (master / "manifest.json").is_file() else None
    )
    if master_manifest is None:
        raise DataError(f"{master}: not a master folder (manifest.json missing); run train_master")
    fold = master_manifest["fold"]  # the training data's identity (an index; older manifests: the fold)
    fold = int(fold["index"] if isinstance(fold, dict) else fold)
    for name in ("meta.json", "norm.npz"):
        _copy(store / name, out / "features" / name)
    _copy(sl / "manifest.json", out / "sl_cache" / "manifest.json")
    sl_manifest = read_document(sl / "manifest.json")
    for model in sl_manifest.get("models", {}):
        rel = Path("checkpoints") / model / f"fold_{fold}.pt"
        _copy(sl / rel, out / "sl_cache" / rel)
    _copy(enc / "manifest.json", out / "encoder" / "manifest.json")
    enc_manifest = read_document(enc / "manifest.json")
    for fit in enc_manifest.get("fits", []):
        if fit["fold"] == fold:
            _copy(enc / fit["checkpoint"], out / "encoder" / fit["checkpoint"])
    _copy(symbols / "agent.pt", out / "symbols" / "agent.pt")
    sym_manifest = read_document(symbols / "manifest.json") if (symbols / "manifest.json").is_file() else {}
    if sym_manifest:
        _copy(symbols / "manifest.json", out / "symbols" / "manifest.json")
    _copy(master / "master.pt", out / "master" / "master.pt")
    _copy(master / "manifest.json", out / "master" / "manifest.json")
    write_json(out / "gate.json", verdict)
    write_text(out / "params.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    bundle = load_bundle(out)  # the bundle must load as hmarl act loads it
    meta = read_json(store / "meta.json")
    manifest = {
        "version": BUNDLE_VERSION,
        "hmarl_version": hmarl.__version__,
        "model_name": cfg.promote.model_name,
        "fingerprint": meta.get("fingerprint"),
        "fold": fold,
        "num_symbols": len(bundle.symbols),
        "symbols": bundle.symbols,
        "feature_names": bundle.feature_names,
        "regime_names": bundle.regime_names,
        "bars_per_year": meta.get("bars_per_year"),
        "gate_decision": verdict.get("decision"),
        "gate_failing": ",".join(verdict.get("failing", [])),
        "symbol_agents": "master/symbols" if symbols != Path(inputs["symbols"]) else "symbols",
        "versions": {
            "sl_models": {k: v.get("version") for k, v in sl_manifest.get("models", {}).items()},
            "encoder": enc_manifest.get("version"),
            "symbol_agent": sym_manifest.get("version"),
            "master": master_manifest.get("version"),
        },
        "run_keys": {
            "train_symbols": sym_manifest.get("run_key"),
            "train_master": master_manifest.get("run_key"),
        },
    }
    write_json(out / "manifest.json", manifest)
    return manifest
