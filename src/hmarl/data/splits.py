"""Purged, embargoed walk-forward folds: the one function every later step uses.

Bars are indexed ``0..n_bars-1`` on the feature store's time axis. Folds walk forward: fold ``i``'s
test window directly follows fold ``i-1``'s, and the last ends at ``n_bars``. Inside a fold the order is
``train | gap | val | gap | test`` with ``gap = label_horizon + embargo_bars``: a train bar's label
(which looks ``label_horizon`` bars ahead) can never reach into validation or test, and the embargo
adds a safety margin against serial correlation (Lopez de Prado's purging + embargo).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hmarl.config import ConfigError, HmarlConfig, SplitsConfig


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[int, int]  # half-open [start, end) bar ranges
    val: tuple[int, int]
    test: tuple[int, int]

    def bars(self, part: str) -> np.ndarray:
        start, end = getattr(self, part)
        return np.arange(start, end)

    def to_dict(self) -> dict:
        return asdict(self)


def make_folds(n_bars: int, splits: SplitsConfig, label_horizon: int = 1, first_bar: int = 0) -> list[Fold]:
    """Folds over bars ``first_bar..n_bars-1`` (``first_bar`` skips indicator warm-up)."""
    gap = label_horizon + splits.embargo_bars
    folds = []
    for i in range(splits.n_folds):
        test_end = n_bars - (splits.n_folds - 1 - i) * splits.test_bars
        test_start = test_end - splits.test_bars
        val_end = test_start - gap
        val_start = val_end - splits.val_bars
        train_end = val_start - gap
        train_start = first_bar if splits.expanding else train_end - splits.train_bars
        if train_start < first_bar or train_end - train_start < splits.train_bars:
            need = (
                first_bar + splits.train_bars + 2 * gap + splits.val_bars + splits.n_folds * splits.test_bars
            )
            raise ConfigError(
                f"splits: n_folds={splits.n_folds}, train_bars={splits.train_bars}, val_bars={splits.val_bars}, "
                f"test_bars={splits.test_bars}, embargo_bars={splits.embargo_bars} (with features.label_horizon="
                f"{label_horizon}, features.warmup_bars={first_bar}) need {need} bars, the data has {n_bars}"
            )
        folds.append(Fold(i, (train_start, train_end), (val_start, val_end), (test_start, test_end)))
    return folds


def folds_for(cfg: HmarlConfig, n_bars: int) -> list[Fold]:
    return make_folds(n_bars, cfg.splits, cfg.features.label_horizon, cfg.features.warmup_bars)
