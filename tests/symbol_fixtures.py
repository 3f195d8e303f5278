"""Small upstream outputs for the symbol-agent tests, built by the real pipeline steps
(ingest -> validate -> features -> sl_cache -> pretrain_encoder via hmarl.steps.runner.execute).

``TINY`` is the default suite's market (seconds to build, for mechanics: resume, DDP, outputs); ``LEARN``
the learning proof's (planted signal IC 0.3, a 250-bar held-out test window). Models are tiny on purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hmarl.config import HmarlConfig, build_config
from hmarl.data.store import FeatureStore
from hmarl.data.synthetic import simulate
from hmarl.steps.runner import execute

UPSTREAM = [
    "tracking.enabled=false",
    "device=cpu",
    "universe.dollar_volume_window=60",
    "splits.embargo_bars=2",
    "sl.mlp.hidden=8",
    "sl.mlp.layers=1",
    "sl.lstm.hidden=4",
    "sl.gru.hidden=4",
    "sl.inner_folds=2",
    "sl.patience=1",
    "sl.batch_size=512",
    "sl.lr=0.01",
    "encoder.branches.transformer=false",
    "encoder.branches.lstm=false",
    "encoder.branches.graph=false",
    "encoder.d_model=8",
    "encoder.heads=1",
    "encoder.cnn_channels=8",
    "encoder.embed_dim=24",
    "encoder.patience=1",
    "encoder.probe_max_samples=500",
    "encoder.attribution_bars=4",
]
TINY = [
    "synthetic.ic=0.3",
    "synthetic.num_symbols=7",
    "universe.top_n=6",
    "synthetic.num_bars=420",
    "splits.n_folds=1",
    "splits.train_bars=200",
    "splits.val_bars=40",
    "splits.test_bars=60",
    "sl.max_epochs=1",
    "sl.max_samples_per_epoch=2000",
    "encoder.epochs=1",
    "encoder.max_bars_per_epoch=64",
]
LEARN = [
    "synthetic.ic=0.3",
    "synthetic.num_symbols=14",
    "universe.top_n=12",
    "synthetic.num_bars=1000",
    "splits.n_folds=1",
    "splits.train_bars=560",
    "splits.val_bars=60",
    "splits.test_bars=250",
    "sl.max_epochs=4",
    "encoder.epochs=2",
    "encoder.max_bars_per_epoch=256",
]
# the smoke agent at test scale: tiny heads, short rollouts
AGENT = [
    "agent.trunk_dim=32",
    "agent.hidden=16",
    "env.num_envs=4",
    "env.episode_length=64",
    "ppo.num_steps=16",
    "ppo.update_epochs=2",
    "ppo.num_minibatches=2",
    "ppo.progress=false",
]


def market_config(market: list[str], mode: str = "planted_alpha", *overrides: str) -> HmarlConfig:
    return build_config({}, [f"synthetic.mode={mode}", *UPSTREAM, *market, *overrides])


def build_upstream(root: Path, cfg: HmarlConfig) -> dict[str, str]:
    """Run the five upstream steps into ``root``; returns the train_symbols inputs."""
    execute("ingest", cfg, {}, {"canonical": str(root / "canonical")})
    execute("validate", cfg, {"canonical": str(root / "canonical")}, {"report": str(root / "validate")})
    store = str(root / "features")
    execute(
        "features",
        cfg,
        {"canonical": str(root / "canonical"), "validation": str(root / "validate")},
        {"store": store},
    )
    sl = str(root / "sl_cache")
    execute("sl_cache", cfg, {"store": store}, {"cache": sl})
    encoder = str(root / "encoder")
    execute("pretrain_encoder", cfg, {"store": store, "sl_cache": sl}, {"encoder": encoder})
    return {"store": store, "sl_cache": sl, "encoder": encoder}


def planted_signal(cfg: HmarlConfig, store_dir: str | Path) -> torch.Tensor:
    """The synthetic market's true signal ``s_t`` aligned to the store's bars and symbols ``(T, S)``."""
    store = FeatureStore.load(store_dir)
    market = simulate(cfg.synthetic)
    rows = np.searchsorted(market.timestamps.asi8, store.timestamps)
    cols = [market.symbols.index(s) for s in store.symbols]
    return torch.tensor(market.signal[rows][:, cols], dtype=torch.float32)
