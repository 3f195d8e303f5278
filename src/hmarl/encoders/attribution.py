"""Gradient x input attribution of the encoder's next-bar return forecast, per feature and per lag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hmarl.data.windows import gather_windows
from hmarl.encoders.model import PretrainHeads, SharedEncoder
from hmarl.io import atomic_path


def gradient_x_input(
    encoder: SharedEncoder, heads: PretrainHeads, x: torch.Tensor, bars: np.ndarray, window: int
) -> np.ndarray:
    """Mean ``|d forecast_1 / d input * input|`` over bars and symbols: ``(window, F)``, lag 0 last."""
    encoder.eval()
    heads.eval()
    w = (
        gather_windows(x, torch.as_tensor(bars, device=x.device), window)
        .detach()
        .clone()
        .requires_grad_(True)
    )
    with torch.enable_grad():
        forecast = heads(encoder.learned(w))[1][..., 0]
        (grad,) = torch.autograd.grad(forecast.sum(), w)
    return (grad * w.detach()).abs().mean(dim=(0, 1)).cpu().numpy().astype(np.float64)


def save_attribution_plot(path: Path, matrix: np.ndarray, feature_names: list[str]) -> None:
    """Heatmap (lag x feature) plus per-feature and per-lag totals, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = matrix.shape[0]
    lags = np.arange(window - 1, -1, -1)  # row i of the window is lag window-1-i
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 2, 2]})
    im = axes[0].imshow(matrix[::-1], aspect="auto", cmap="viridis")
    axes[0].set(
        title="|gradient x input| of the next-bar forecast",
        xlabel="feature",
        ylabel="lag (bars back)",
        xticks=range(len(feature_names)),
        yticks=range(0, window, 2),
        yticklabels=lags[::-1][::2],
    )
    axes[0].set_xticklabels(feature_names, rotation=90, fontsize=7)
    fig.colorbar(im, ax=axes[0])
    per_feature = matrix.sum(0)
    order = np.argsort(per_feature)
    axes[1].barh(np.array(feature_names)[order], per_feature[order])
    axes[1].set(title="per feature (summed over lags)")
    axes[1].tick_params(axis="y", labelsize=7)
    axes[2].bar(lags, matrix.sum(1))
    axes[2].set(title="per lag (summed over features)", xlabel="lag (bars back)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
