"""Linear probes: multinomial logistic regression of next-bar direction on a representation.

Fitted on a fold's train bars (L2 strength chosen on its validation bars), scored on its test bars against
the base-rate predictor, for the encoder's embedding and for the raw (normalized, flattened) window with the
same procedure, so the two are compared like for like.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hmarl.sl.metrics import base_rate, classification_metrics


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0).clamp_min(1e-6)


def fit_probe(
    z: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(D, 3)`` and bias of an L2-penalized multinomial logistic regression on standardized ``z``."""
    w = (init[0].clone() if init else torch.zeros(z.shape[1], 3, dtype=z.dtype)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(3, dtype=z.dtype)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_metrics(
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    l2_grid: list[float],
) -> dict[str, float]:
    """Fit on ``train`` for each L2 strength, keep the one with the lowest ``val`` log loss, score ``test``.

    Each set is ``(features (N, D), labels (N,))``; the chosen strength is reported as ``l2``. The grid is
    walked from the strongest penalty down, each fit starting from the previous solution (warm start).
    """
    mean, std = _standardizer(train[0].cpu().float())

    def standardized(x: torch.Tensor) -> torch.Tensor:
        return (x.cpu().float() - mean) / std

    z_train, z_val, z_test = standardized(train[0]), standardized(val[0]), standardized(test[0])
    y_train = torch.as_tensor(train[1], dtype=torch.long)
    prior = base_rate(np.asarray(train[1]))
    best, probe = None, None
    for l2 in sorted(l2_grid, reverse=True):
        probe = fit_probe(z_train, y_train, l2, probe)
        val_probs = torch.softmax(z_val @ probe[0] + probe[1], -1).double().numpy()
        val_loss = classification_metrics(val_probs, np.asarray(val[1]), prior)["log_loss"]
        if best is None or val_loss < best[0]:
            best = (val_loss, l2, probe)
    test_probs = torch.softmax(z_test @ best[2][0] + best[2][1], -1).double().numpy()
    out = classification_metrics(test_probs, np.asarray(test[1]), prior)
    out["l2"] = float(best[1])
    return out
