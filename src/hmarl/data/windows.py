"""Window gather for ``(bar, symbol)`` pairs: the SL models train on pairs drawn across bars and symbols.

All symbols of a batch of bars are gathered by :func:`hmarl.env.gather.gather_windows` (``(B, S, W, F)``);
this is its per-pair counterpart (one indexing op, no Python loop), used by the SL trainer.
"""

from __future__ import annotations

import torch


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
