"""Everything the symbol-agent trainer reads, loaded and cross-checked once.

Inputs are the three upstream outputs: the feature store, the SL cache and the encoder folder. They must
describe the same data (fingerprint, symbols, feature list); a mismatch is a :class:`DataError` naming it,
raised before anything is trained or written.

- ``agent.encoder: frozen``: the market input of a bar is the encoder's cached embedding (``embeddings.npy``,
  walk-forward: no bar is embedded by an encoder that trained on it).
- ``agent.encoder: finetune``: the fold's encoder checkpoint is loaded into the agent and trained further;
  its input is the bar's feature window, normalized with the fold's train statistics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.inputs import AgentTables, env_width
from hmarl.config import ConfigError, HmarlConfig
from hmarl.data.splits import Fold, folds_for
from hmarl.data.store import FeatureStore
from hmarl.env.market import MarketData
from hmarl.errors import DataError
from hmarl.io import read_json
from hmarl.sl.cache import SLCache
from hmarl.sl.inputs import check_store, model_inputs


@dataclass
class TrainingData:
    store: FeatureStore
    sl: SLCache
    encoder_dir: Path
    encoder_manifest: dict
    fold: Fold
    fingerprint: str

    @property
    def symbols(self) -> list[str]:
        return self.store.symbols

    @property
    def identity(self) -> dict:
        """What a saved model was trained on; loaders compare it with the data they are given."""
        return {
            "symbols": self.symbols,
            "feature_names": self.store.feature_names,
            "fingerprint": self.fingerprint,
            "fold": self.fold.index,
        }

    @property
    def num_regime(self) -> int:
        return int(self.store.regime.shape[1])

    @property
    def env_dim(self) -> int:
        return env_width(self.num_regime)

    @property
    def embed_dim(self) -> int:
        return int(self.encoder_manifest["embed_dim"])

    def market(self, cfg: HmarlConfig, device: torch.device) -> MarketData:
        return MarketData.from_store(self.store, cfg.env, device)

    def tables(self, cfg: HmarlConfig, device: torch.device) -> AgentTables:
        if cfg.agent.encoder == "frozen":
            emb = np.load(self.encoder_dir / "embeddings.npy", mmap_mode="r")
            return AgentTables(emb, self.sl.probs, None, device)
        features = model_inputs(self.store, self.fold.index).numpy()
        return AgentTables(features, self.sl.probs, cfg.features.window, device)

    def encoder(self):
        """The fold's encoder (fine-tuning), rebuilt from its checkpoint."""
        from hmarl.encoders.model import load_encoder

        fit = next((f for f in self.encoder_manifest["fits"] if f["fold"] == self.fold.index), None)
        if fit is None:
            raise DataError(f"{self.encoder_dir}: no encoder checkpoint for fold {self.fold.index}")
        encoder, _, _ = load_encoder(
            self.encoder_dir / fit["checkpoint"], self.store.feature_names, self.symbols
        )
        return encoder

    def digest(self) -> str:
        """Hash of the inputs' identities (store fingerprint, SL cache and encoder manifests)."""
        h = hashlib.sha256()
        for part in (self.fingerprint, self.sl.manifest, self.encoder_manifest):
            h.update(repr(part).encode())
        return h.hexdigest()


def load_training_data(cfg: HmarlConfig, inputs: dict[str, Path]) -> TrainingData:
    store_dir, sl_dir, enc_dir = Path(inputs["store"]), Path(inputs["sl_cache"]), Path(inputs["encoder"])
    store = FeatureStore.load(store_dir)
    check_store(store, cfg, where=str(store_dir))
    cache = SLCache.load(sl_dir)
    cache.check_matches(store, where=str(sl_dir))
    if not (enc_dir / "manifest.json").exists():
        raise DataError(f"{enc_dir}: not an encoder folder (manifest.json missing)")
    manifest = read_json(enc_dir / "manifest.json")
    fingerprint = store.meta.get("fingerprint")
    if manifest.get("fingerprint") != fingerprint:
        raise DataError(
            f"{enc_dir}: data fingerprint {manifest.get('fingerprint')!r} differs from the feature "
            f"store's {fingerprint!r}; rerun pretrain_encoder"
        )
    if manifest.get("symbols") != store.symbols:
        raise DataError(f"{enc_dir}: the encoder's symbols differ from the feature store's")
    if manifest.get("feature_names") != store.feature_names:
        raise DataError(f"{enc_dir}: the encoder's feature list differs from the feature store's")
    if cfg.agent.encoder == "frozen":
        emb = np.load(enc_dir / "embeddings.npy", mmap_mode="r")
        want = (store.num_bars, store.num_symbols, int(manifest["embed_dim"]))
        if emb.shape != want:
            raise DataError(f"{enc_dir}/embeddings.npy: shape {emb.shape}, expected {want}")
    folds = folds_for(cfg, store.num_bars)
    k = cfg.ppo.fold
    if not -len(folds) <= k < len(folds):
        raise ConfigError(f"ppo.fold: {k} is outside the {len(folds)} folds of splits.n_folds={len(folds)}")
    return TrainingData(store, cache, enc_dir, manifest, folds[k], fingerprint)
