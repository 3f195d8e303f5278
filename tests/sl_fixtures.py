"""Small synthetic feature stores for the SL / encoder / tracking tests, built by the real pipeline steps
(ingest -> validate -> features). One store per market mode per test session (they take seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmarl.config import HmarlConfig, build_config
from hmarl.runtime import torch_threads
from hmarl.steps.runner import execute

# 12 symbols x 640 bars, two folds; planted signal strong (ic 0.4) so learning shows in small samples
MARKET = [
    "synthetic.ic=0.4",
    "synthetic.num_symbols=14",
    "universe.top_n=12",
    "synthetic.num_bars=640",
    "universe.dollar_volume_window=100",
    "splits.n_folds=2",
    "splits.train_bars=240",
    "splits.val_bars=60",
    "splits.test_bars=80",
    "splits.embargo_bars=2",
    "tracking.enabled=false",
    "device=cpu",
]
# tiny models, few epochs: the tests check honesty and learning, not accuracy records
MODELS = [
    "sl.mlp.hidden=16",
    "sl.lstm.hidden=8",
    "sl.gru.hidden=8",
    "sl.inner_folds=3",
    "sl.max_epochs=6",
    "sl.patience=2",
    "sl.batch_size=256",
    "sl.lr=0.005",
    "encoder.d_model=16",
    "encoder.heads=2",
    "encoder.lstm_hidden=8",
    "encoder.cnn_channels=8",
    "encoder.embed_dim=48",
    "encoder.epochs=3",
    "encoder.batch_bars=16",
    "encoder.graph_top_k=4",
    "encoder.probe_max_samples=2000",
]


def small_config(mode: str = "planted_alpha", *overrides: str) -> HmarlConfig:
    return build_config({}, [f"synthetic.mode={mode}", *MARKET, *MODELS, *overrides])


def build_store(root: Path, cfg: HmarlConfig) -> Path:
    execute("ingest", cfg, {}, {"canonical": str(root / "canonical")})
    execute("validate", cfg, {"canonical": str(root / "canonical")}, {"report": str(root / "validate")})
    store = root / "features"
    execute(
        "features",
        cfg,
        {"canonical": str(root / "canonical"), "validation": str(root / "validate")},
        {"store": str(store)},
    )
    return store


_STORES: dict[str, Path] = {}


def shared_store(tmp_path_factory, mode: str) -> Path:
    """The session's feature store for ``mode`` (built on first use; treat it as read-only)."""
    if mode not in _STORES:
        _STORES[mode] = build_store(tmp_path_factory.mktemp(f"store_{mode}"), small_config(mode))
    return _STORES[mode]


_CACHES: dict[str, Path] = {}


def shared_sl_cache(tmp_path_factory, mode: str) -> Path:
    """The session's SL cache for ``mode``, built by the sl_cache step on :func:`shared_store`."""
    if mode not in _CACHES:
        out = tmp_path_factory.mktemp(f"sl_cache_{mode}") / "sl_cache"
        execute(
            "sl_cache",
            small_config(mode),
            {"store": str(shared_store(tmp_path_factory, mode))},
            {"cache": str(out)},
        )
        _CACHES[mode] = out
    return _CACHES[mode]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread, and far more steadily on a shared 2-core box."""
    with torch_threads(1):
        yield
