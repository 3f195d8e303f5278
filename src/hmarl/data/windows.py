"""Windows of the feature store by bar index: observations carry indices, not windows; one module for
every gather.

``FeatureWindows`` holds a fold's normalized ``(T, S, F)`` features once on the device; ``windows(bars)``
returns the ``(B, S, W, F)`` slabs ending at each bar (bars ``t - W + 1 .. t``, never later);
``gather_bars`` does the same for any cached per-bar array (SL probabilities ``(T, S, 9)``, encoder
embeddings ``(T, S, 256)``, ...); ``gather_pair_windows`` is the per-``(bar, symbol)`` counterpart the SL
and encoder trainers draw their samples with (``(N, W, F)``, one indexing op, no Python loop).
"""

from __future__ import annotations

import numpy as np
import torch

from hmarl.data.store import FeatureStore
from hmarl.errors import DataError


def gather_bars(table: torch.Tensor, bars: torch.Tensor) -> torch.Tensor:
    """``table[bars]`` for a ``(T, ...)`` table and any-shaped int64 ``bars``: ``(*bars.shape, ...)``."""
    return table.index_select(0, bars.reshape(-1)).view(*bars.shape, *table.shape[1:])


def gather_windows(table: torch.Tensor, bars: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, S, W, F)`` windows of a ``(T, S, F)`` table ending at ``bars`` (B,), oldest bar first."""
    offsets = torch.arange(1 - window, 1, device=bars.device)
    idx = bars.view(-1, 1) + offsets  # (B, W)
    slab = gather_bars(table, idx)  # (B, W, S, F)
    return slab.transpose(1, 2)


class FeatureWindows:
    """A fold's normalized features on ``device`` with batched window gathers."""

    def __init__(
        self,
        store: FeatureStore,
        fold: int,
        window: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.window = int(window or store.meta.get("window", 24))
        if not 0 <= fold < len(store.norm_mean):
            raise DataError(
                f"feature store has {len(store.norm_mean)} folds of normalization statistics, not fold {fold}"
            )
        std = np.where(store.norm_std[fold] > 0, store.norm_std[fold], 1.0)
        features = (np.asarray(store.features, dtype=np.float32) - store.norm_mean[fold]) / std
        self.table = torch.tensor(features, dtype=dtype, device=device)
        self.min_bar = self.window - 1  # first bar with a full window

    def windows(self, bars: torch.Tensor) -> torch.Tensor:
        """``(B, S, W, F)`` normalized windows ending at ``bars``; bars must be >= window - 1."""
        return gather_windows(self.table, bars, self.window)


def gather_pair_windows(
    features: torch.Tensor, bars: torch.Tensor, symbols: torch.Tensor, window: int
) -> torch.Tensor:
    """``features`` (T, S, F), ``(bar, symbol)`` pairs (N,) each -> ``(N, window, F)``, oldest bar first."""
    bars = torch.as_tensor(bars, dtype=torch.long, device=features.device)
    if bars.numel() and (int(bars.min()) < window - 1 or int(bars.max()) >= features.shape[0]):
        raise IndexError(
            f"window gather: bars must lie in [{window - 1}, {features.shape[0] - 1}] for window={window}, "
            f"got min {int(bars.min())}, max {int(bars.max())}"
        )
    idx = bars[:, None] + torch.arange(1 - window, 1, device=bars.device)  # (N, W)
    return features[idx, torch.as_tensor(symbols, dtype=torch.long, device=features.device)[:, None]]
