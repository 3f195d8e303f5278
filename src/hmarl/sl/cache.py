"""The SL probability cache: ``(time, symbol, 3 models x 3 classes)`` float32, aligned with the store.

One walk-forward array serves every consumer. Each bar's probabilities come from exactly one model, and
that model never trained on the bar or its label (nor on anything within ``label_horizon + embargo``):

- bars from the first fold's train start up to its validation start: out-of-fold predictions of purged
  K-fold cross-fitting inside that train range (inner split ``j`` predicts its own held-out block);
- the first fold's validation and test bars: the first fold's model;
- fold ``k``'s test bars: fold ``k``'s model, trained on fold ``k``'s train bars only.

So a later fold's train range holds predictions of earlier folds' models (trained on the past only), and
no value anywhere depends on data after its fold's test window. Bars before the first fold are NaN.

Folder layout (``data/sl_cache``)::

    probs.npy          (T, S, 9) float32  [mlp down/flat/up, lstm ..., gru ...]; NaN: no prediction
    source_fold.npy    (T,) int16         fold of the model that produced the bar (-1: none)
    source_split.npy   (T,) int16         inner cross-fitting split of that model (-1: the fold's model)
    manifest.json      models (version, hparams, checkpoints), channels, folds, inner splits, fit ranges
                       of every model, data fingerprint, feature_names, symbols, label thresholds, seed
    metrics.json       per model, fold and part: accuracy, log loss, Brier, AUC, each with its base rate
    checkpoints/<model>/fold_<k>.pt            the fold's model
    checkpoints/<model>/fold_<k>_inner_<j>.pt  cross-fitting model j of fold k
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmarl.data.splits import Fold
from hmarl.data.store import FeatureStore
from hmarl.errors import DataError
from hmarl.io import read_json, write_json
from hmarl.sl.inputs import feature_mismatch
from hmarl.sl.labels import CLASSES
from hmarl.sl.models import MODEL_NAMES

CHANNELS = tuple(f"{m}_{c}" for m in MODEL_NAMES for c in CLASSES)
OUTER = -1  # source_split of a fold's own model
NONE = -1  # source_fold of a bar without prediction


def inner_blocks(fold: Fold, n_splits: int, gap: int) -> list[tuple[int, int]]:
    """Contiguous held-out blocks covering ``[train start, val start)`` (the purge gap included)."""
    start, end = fold.train[0], fold.val[0]
    edges = np.linspace(start, end, n_splits + 1).round().astype(int)
    if np.diff(edges).min() <= gap:
        raise DataError(f"sl.inner_folds={n_splits}: blocks of the first fold's train range are too short")
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def inner_fit_ranges(fold: Fold, block: tuple[int, int], gap: int) -> list[tuple[int, int]]:
    """Train bars of the fold minus the held-out block and everything within ``gap`` bars of it."""
    (start, end), (a, b) = fold.train, block
    ranges = [(start, min(end, a - gap)), (max(start, b + gap), end)]
    return [(lo, hi) for lo, hi in ranges if hi > lo]


def walk_forward_plan(folds: list[Fold], blocks: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """``(fold, split, start, end)``: which model predicts which bars (see the module docstring)."""
    plan = [(0, j, a, b) for j, (a, b) in enumerate(blocks)]
    plan.append((0, OUTER, folds[0].val[0], folds[0].test[1]))
    plan += [(f.index, OUTER, f.test[0], f.test[1]) for f in folds[1:]]
    return plan


def honesty_violations(
    source_fold: np.ndarray, source_split: np.ndarray, fit_ranges: dict[tuple[int, int], list], gap: int
) -> list[str]:
    """Bars whose producing model trained on a bar within ``gap`` of it (empty list: all honest)."""
    problems = []
    for (k, j), ranges in fit_ranges.items():
        bars = np.flatnonzero((source_fold == k) & (source_split == j))
        for lo, hi in ranges:  # training bars lo..hi-1 forbid bars lo-gap .. hi-1+gap
            bad = bars[(bars >= lo - gap) & (bars < hi + gap)]
            if bad.size:
                problems.append(
                    f"fold {k} split {j}: bars {bad[:5].tolist()} within {gap} of its train bars [{lo}, {hi})"
                )
    pairs = np.stack([source_fold, source_split], axis=1)[source_fold != NONE]
    for k, j in np.unique(pairs, axis=0).tolist():
        if (k, j) not in fit_ranges:
            problems.append(f"bars name fold {k} split {j}, a model with no recorded train bars")
    return problems


@dataclass
class SLCache:
    probs: np.ndarray  # (T, S, 9)
    source_fold: np.ndarray  # (T,)
    source_split: np.ndarray  # (T,)
    manifest: dict = field(default_factory=dict)

    def model_probs(self, model: str) -> np.ndarray:
        """``(T, S, 3)`` probabilities of one model."""
        i = MODEL_NAMES.index(model)
        return self.probs[..., 3 * i : 3 * i + 3]

    def fit_ranges(self) -> dict[tuple[int, int], list]:
        return {(m["fold"], m["split"]): m["fit_ranges"] for m in self.manifest["fits"]}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "probs.npy", self.probs.astype(np.float32))
        np.save(path / "source_fold.npy", self.source_fold.astype(np.int16))
        np.save(path / "source_split.npy", self.source_split.astype(np.int16))
        write_json(path / "manifest.json", self.manifest)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> SLCache:
        path = Path(path)
        if not (path / "manifest.json").exists():
            raise DataError(f"{path}: not an SL cache (manifest.json missing)")
        mode = "r" if mmap else None
        return cls(
            probs=np.load(path / "probs.npy", mmap_mode=mode),
            source_fold=np.load(path / "source_fold.npy"),
            source_split=np.load(path / "source_split.npy"),
            manifest=read_json(path / "manifest.json"),
        )

    def check_matches(self, store: FeatureStore, where: str = "SL cache") -> None:
        """The cache must come from this very store: fingerprint, symbols, features, shape."""
        m = self.manifest
        if m.get("fingerprint") != store.meta.get("fingerprint"):
            raise DataError(
                f"{where}: data fingerprint {m.get('fingerprint')!r} differs from the feature store's "
                f"{store.meta.get('fingerprint')!r}; rebuild the SL cache"
            )
        if m.get("feature_names") != store.feature_names:
            raise DataError(
                f"{where}: {feature_mismatch(m.get('feature_names') or [], store.feature_names, 'cache', 'store')}"
            )
        if m.get("symbols") != store.symbols:
            raise DataError(f"{where}: symbols differ from the feature store's")
        want = (store.num_bars, store.num_symbols, len(CHANNELS))
        if tuple(self.probs.shape) != want:
            raise DataError(f"{where}: probs has shape {tuple(self.probs.shape)}, expected {want}")
