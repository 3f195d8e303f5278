"""The model bundle a desk serves, checked once, whole, before anything runs: :func:`load_bundle`.

A bundle is a folder holding the pipeline's outputs under their step output names::

    features/   meta.json + norm.npz of the feature store (feature list, symbols, folds, normalization)
    sl_cache/   manifest.json + checkpoints/<model>/fold_<k>.pt (the SL direction classifiers)
    encoder/    manifest.json + the fold's encoder checkpoint
    symbols/    agent.pt (train_symbols)        master/   master.pt + manifest.json (train_master)

or a registry URI ``models:/<name>@<alias>`` whose artifact is such a folder. ``hmarl act``, ``hmarl
evaluate``, promotion (the new bundle and the champion) load it here; every file goes through
:mod:`hmarl.safe_load`, so a missing, empty, truncated or crafted file, a manifest of the wrong shape or a
path leading outside the bundle is a :class:`~hmarl.errors.DataError` ``<file>: <what is wrong>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.master import MasterAgent
from hmarl.agents.saved import load_agent
from hmarl.agents.saved_master import load_master
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import ConfigError, HmarlConfig, build_config
from hmarl.errors import DataError
from hmarl.safe_load import inside, read_arrays, read_document, typed_key

PARTS = ("features", "sl_cache", "encoder", "symbols", "master")


@dataclass
class Bundle:
    cfg: HmarlConfig  # the params the master was trained with
    symbols: list[str]
    feature_names: list[str]
    regime_names: list[str]
    fold: int
    norm_mean: np.ndarray  # (F,)
    norm_std: np.ndarray
    sl_models: list[tuple[torch.nn.Module, float]]  # (classifier, temperature) in SL cache channel order
    encoder: torch.nn.Module | None  # None: the symbol agents run their own fine-tuned encoder
    symbol_agent: SymbolAgent
    master: MasterAgent
    data_meta: dict = dataclasses.field(default_factory=dict)  # the training data's features/meta.json

    @property
    def window(self) -> int:
        return self.cfg.features.window

    @property
    def device(self) -> torch.device:
        return next(self.symbol_agent.parameters()).device

    def to(self, device: str | torch.device) -> Bundle:
        """Moves the models to ``device`` (in place); :func:`hmarl.serve.decision.decide` then runs there."""
        for m in [*(model for model, _ in self.sl_models), self.encoder, self.symbol_agent, self.master]:
            if m is not None:
                m.to(device)
        return self


def resolve_model(model: str | Path, cfg: HmarlConfig | None, workdir: Path) -> Path:
    """A bundle folder, or a registry URI downloaded into ``workdir``."""
    if str(model).startswith("models:/"):
        from hmarl.tracking.registry import ModelRegistry

        tracking = (cfg or build_config({})).tracking
        uri = tracking.mlflow_uri
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            # MLflow would create an empty registry there; nothing can be found in it
            raise DataError(
                f"{uri.removeprefix('sqlite:///')}: no model registry there (tracking.mlflow_uri)"
            )
        return ModelRegistry(tracking).download(str(model), workdir)
    return Path(model)


def _names(doc: dict, key: str, path: Path) -> list[str]:
    names = typed_key(doc, key, list, path)
    if not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{path}: {key!r} must be a list of names")
    return names


def _features(root: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    meta_path, norm_path = root / "features" / "meta.json", root / "features" / "norm.npz"
    meta = read_document(meta_path)
    for key in ("symbols", "feature_names", "regime_names"):
        _names(meta, key, meta_path)
    if not meta["symbols"] or not meta["feature_names"]:
        raise DataError(f"{meta_path}: no symbols or no features")
    typed_key(meta, "fingerprint", str, meta_path)
    norm = read_arrays(norm_path, ("mean", "std"))
    mean, std, f = norm["mean"], norm["std"], len(meta["feature_names"])
    if mean.ndim != 2 or mean.shape != std.shape or mean.shape[1] != f:
        raise DataError(f"{norm_path}: mean/std shaped {mean.shape}/{std.shape}, need (folds, {f})")
    if not (std > 0).all():
        raise DataError(f"{norm_path}: std must be > 0")
    return meta, mean, std


def _config(root: Path) -> HmarlConfig:
    path = root / "master" / "manifest.json"
    raw = typed_key(read_document(path), "config", dict, path)
    try:
        return build_config(raw)
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from None


def _sl_models(root: Path, fold: int, feature_names: list[str]) -> list[tuple[torch.nn.Module, float]]:
    from hmarl.sl.models import load_checkpoint

    path = root / "sl_cache" / "manifest.json"
    channels = _names(read_document(path), "channels", path)
    models = []
    # in the cache's channel order (mlp_down, mlp_flat, mlp_up, lstm_down, ...), as the agents saw them
    for name in dict.fromkeys(c.rsplit("_", 1)[0] for c in channels):
        file = inside(root / "sl_cache", f"checkpoints/{name}/fold_{fold}.pt", path)
        model, info = load_checkpoint(file, feature_names)
        temperature = info.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise DataError(f"{file}: temperature {temperature!r} is not a positive number")
        models.append((model, float(temperature)))
    return models


def _encoder(root: Path, fold: int, meta: dict) -> torch.nn.Module:
    from hmarl.encoders.model import load_encoder

    path = root / "encoder" / "manifest.json"
    fits = typed_key(read_document(path), "fits", list, path)
    fit = next((f for f in fits if isinstance(f, dict) and f.get("fold") == fold), None)
    if fit is None:
        raise DataError(f"{path}: no encoder checkpoint for fold {fold}")
    file = inside(root / "encoder", fit.get("checkpoint"), path)
    encoder, _, _ = load_encoder(file, meta["feature_names"], meta["symbols"])
    return encoder


def load_bundle(folder: str | Path) -> Bundle:
    """The bundle in ``folder``, every file read and every piece checked against the others (same data
    fingerprint, symbols, features and fold) before it is returned."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: model bundle not found (a folder, or models:/<name>@<alias>)")
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise DataError(f"{root}: not a model bundle, missing {missing} (need {list(PARTS)})")
    meta, mean, std = _features(root)
    master, master_meta = load_master(root / "master" / "master.pt")
    symbol_agent, agent_meta = load_agent(root / "symbols" / "agent.pt")
    cfg = _config(root)
    fold = master_meta.get("fold")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(mean):
        raise DataError(f"{root}/master/master.pt: fold {fold!r} is not one of the {len(mean)} folds")
    for name, m in (("symbols/agent.pt", agent_meta), ("master/master.pt", master_meta)):
        if m.get("symbols") != meta["symbols"] or m.get("fingerprint") != meta["fingerprint"]:
            raise DataError(f"{root}/{name}: trained on other data than {root}/features describes")
    sl_models = _sl_models(root, fold, meta["feature_names"])
    encoder = _encoder(root, fold, meta) if agent_meta.get("encoder") is None else None
    return Bundle(
        cfg,
        list(meta["symbols"]),
        list(meta["feature_names"]),
        list(meta["regime_names"]),
        fold,
        np.asarray(mean[fold]),
        np.asarray(std[fold]),
        sl_models,
        encoder,
        symbol_agent,
        master,
        meta,
    )
