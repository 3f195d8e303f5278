"""The encoder's branches. Each maps windows ``(B, S, W, F)`` to ``(B, S, d)``.

The sequence branches fold symbols into the batch (one pass over ``B*S`` windows); the graph branch keeps
the symbol axis and mixes symbols of the same bar with one matrix product (no loop over symbols).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fold_symbols(x: torch.Tensor) -> torch.Tensor:
    """``(B, S, ...)`` -> ``(B*S, ...)``: symbols folded into the batch."""
    return x.reshape(-1, *x.shape[2:])


class TransformerBranch(nn.Module):
    """Multi-head self-attention at several time scales (steps average-pooled by each scale)."""

    def __init__(self, num_features: int, window: int, d: int, heads: int, scales: list[int], dropout: float):
        super().__init__()
        self.scales = [s for s in scales if s <= window]
        self.embed = nn.Linear(num_features, d)
        self.pos = nn.Parameter(torch.randn(window, d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, heads, 2 * d, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in self.scales
        )
        self.out = nn.Linear(2 * d * len(self.scales), d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        tokens = self.embed(fold_symbols(x)) + self.pos
        pooled = []
        for scale, layer in zip(self.scales, self.layers, strict=True):
            n = tokens.shape[1] // scale
            z = tokens[:, tokens.shape[1] - n * scale :]  # drop the oldest remainder, keep the last bar
            z = z.reshape(z.shape[0], n, scale, -1).mean(2)
            z = layer(z)
            pooled += [z[:, -1], z.mean(1)]
        return self.out(torch.cat(pooled, -1)).reshape(b, s, -1)


class BiLSTMBranch(nn.Module):
    def __init__(self, num_features: int, hidden: int, d: int):
        super().__init__()
        self.rnn = nn.LSTM(num_features, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        _, (h, _) = self.rnn(fold_symbols(x))
        return self.out(torch.cat([h[0], h[1]], -1)).reshape(b, s, -1)


class CNNBranch(nn.Module):
    """Dilated 1-D convolutions over time (dilation 1, 2, 4), residual, pooled by mean and last step."""

    def __init__(self, num_features: int, channels: int, kernel: int, d: int):
        super().__init__()
        self.inp = nn.Conv1d(num_features, channels, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding="same", dilation=dil) for dil in (1, 2, 4)
        )
        self.act = nn.GELU()
        self.out = nn.Linear(2 * channels, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        h = self.inp(fold_symbols(x).transpose(1, 2))  # (B*S, C, W)
        for conv in self.convs:
            h = h + self.act(conv(h))
        return self.out(torch.cat([h[..., -1], h.mean(-1)], -1)).reshape(b, s, -1)


class GraphBranch(nn.Module):
    """Message passing over a fixed symbol graph (``adjacency`` (S, S), rows sum to 1)."""

    def __init__(self, num_features: int, d: int, layers: int, adjacency: torch.Tensor):
        super().__init__()
        self.register_buffer("adjacency", adjacency.float())
        self.node = nn.Sequential(nn.Linear(2 * num_features, d), nn.GELU(), nn.Linear(d, d))
        self.self_lin = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.nbr_lin = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.node(torch.cat([x[:, :, -1], x.mean(2)], -1))  # (B, S, d): last bar and window mean
        for lin_s, lin_n, norm in zip(self.self_lin, self.nbr_lin, self.norms, strict=True):
            msg = torch.matmul(self.adjacency, h)  # (S, S) @ (B, S, d); einsum is ~50x slower at B = 1
            h = norm(h + self.act(lin_s(h) + lin_n(msg)))
        return h


def correlation_adjacency(returns: np.ndarray, top_k: int) -> torch.Tensor:
    """Row-normalized graph from ``returns`` (bars, S) of train bars: each symbol links to its ``top_k``
    most positively correlated peers (weight = correlation). NaN returns count as 0 after demeaning."""
    r = np.asarray(returns, dtype=np.float64)
    ok = np.isfinite(r)
    mean = np.where(ok, r, 0).sum(0) / np.maximum(ok.sum(0), 1)
    z = np.where(ok, r - mean, 0.0)
    z /= np.maximum(np.sqrt((z * z).sum(0)), 1e-12)
    corr = z.T @ z
    np.fill_diagonal(corr, -np.inf)
    s = corr.shape[0]
    k = min(top_k, s - 1)
    adj = np.zeros((s, s))
    if k > 0:
        nbrs = np.argsort(-corr, axis=1, kind="stable")[:, :k]
        w = np.clip(np.take_along_axis(corr, nbrs, 1), 0.0, None)
        np.put_along_axis(adj, nbrs, w, 1)
    rows = adj.sum(1, keepdims=True)
    adj = np.where(rows > 0, adj / np.where(rows > 0, rows, 1.0), 0.0)
    return torch.from_numpy(adj).float()
