"""What the SL models and the encoder read from the feature store, and the checks that it is the right one.

Inputs are normalized with the statistics of one fold's train bars (``FeatureStore.norm_*``), missing
values (warm-up, masked bars) become 0 (the train mean) and outliers are clipped, so a bad bar cannot blow
up a batch.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from hmarl.config import HmarlConfig
from hmarl.data.features import FEATURE_NAMES
from hmarl.data.splits import folds_for
from hmarl.data.store import FeatureStore
from hmarl.errors import DataError

CLIP = 10.0  # normalized features beyond +-CLIP standard deviations are clipped


def feature_mismatch(a: list[str], b: list[str], name_a: str, name_b: str) -> str:
    """One sentence naming how two feature lists differ."""
    missing = [f for f in b if f not in a]
    extra = [f for f in a if f not in b]
    if missing or extra or len(a) != len(b):
        return (
            f"feature list differs: {name_a} has {len(a)} features, {name_b} has {len(b)}; "
            f"only in {name_b}: {missing}, only in {name_a}: {extra}"
        )
    first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"feature order differs at position {first}: {name_a} has {a[first]!r}, {name_b} has {b[first]!r}"


def check_store(store: FeatureStore, cfg: HmarlConfig, where: str = "feature store") -> None:
    """Raise :class:`DataError` naming the first way ``store`` does not fit ``cfg`` (and the code)."""
    store.check()
    t, s, f = store.features.shape
    if store.feature_names != list(FEATURE_NAMES):
        raise DataError(
            f"{where}: {feature_mismatch(store.feature_names, list(FEATURE_NAMES), 'store', 'code')}"
        )
    if not store.meta.get("fingerprint"):
        raise DataError(f"{where}: meta.json has no data fingerprint")
    for key in ("window", "label_horizon", "warmup_bars"):
        want = getattr(cfg.features, key)
        if key in store.meta and int(store.meta[key]) != want:
            raise DataError(f"{where}: built with features.{key}={store.meta[key]}, params say {want}")
    if t < cfg.features.window:
        raise DataError(f"{where}: {t} bars, fewer than the window of {cfg.features.window}")
    n_folds = cfg.splits.n_folds
    if store.norm_mean.shape != (n_folds, f) or store.norm_std.shape != (n_folds, f):
        raise DataError(
            f"{where}: normalization statistics have shape {store.norm_mean.shape}, expected "
            f"(splits.n_folds={n_folds}, features={f})"
        )
    if "folds" in store.meta:
        want = json.loads(json.dumps([fold.to_dict() for fold in folds_for(cfg, t)]))  # tuples -> lists
        if store.meta["folds"] != want:
            raise DataError(
                f"{where}: folds in meta.json {store.meta['folds']} differ from the folds the splits params "
                f"give {want}"
            )


def model_inputs(store: FeatureStore, fold: int) -> torch.Tensor:
    """``(T, S, F)`` float32 tensor normalized with fold ``fold``'s train statistics."""
    x = store.normalized(fold)
    np.nan_to_num(x, copy=False, nan=0.0, posinf=CLIP, neginf=-CLIP)
    np.clip(x, -CLIP, CLIP, out=x)
    return torch.from_numpy(x)


def ranges_to_bars(ranges: list[tuple[int, int]] | list[list[int]]) -> np.ndarray:
    parts = [np.arange(a, b) for a, b in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def bars_to_ranges(bars: np.ndarray) -> list[list[int]]:
    """Sorted unique bars -> the fewest half-open ``[start, end)`` ranges covering exactly them."""
    bars = np.unique(np.asarray(bars, dtype=np.int64))
    if bars.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(bars) > 1)
    starts = np.r_[bars[0], bars[breaks + 1]]
    ends = np.r_[bars[breaks] + 1, bars[-1] + 1]
    return [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]


def labelled_pairs(labels: np.ndarray, bars: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bar, symbol)`` pairs among ``bars`` with a label and a full window behind them."""
    bars = np.asarray(bars, dtype=np.int64)
    bars = bars[bars >= window - 1]
    b, s = np.nonzero(labels[bars] >= 0)
    return bars[b], s.astype(np.int64)
