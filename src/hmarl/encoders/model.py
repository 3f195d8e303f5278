"""The shared encoder: enabled branches -> fusion -> ``embed_dim`` embedding per (bar, symbol).

With ``append_sl_priors`` the last 9 dimensions are the SL probabilities of that bar passed through
unchanged (the priors), and the fusion produces the other ``embed_dim - 9``. Pretraining heads read only
the learned part, so the encoder cannot lean on the SL models for its self-supervised targets.

Checkpoint (a plain dict, ``torch.load(weights_only=True)``): ``encoder`` and ``heads`` state dicts,
``version``, ``hparams`` (the ``encoder:`` params), ``window``, ``feature_names``, ``symbols``, ``fold``,
``fit_ranges`` (pretraining bars), ``fingerprint``, ``vol_window`` (forecast targets are returns in units
of that trailing volatility).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hmarl.encoders.branches import BiLSTMBranch, CNNBranch, GraphBranch, TransformerBranch
from hmarl.encoders.params import EncoderConfig
from hmarl.errors import DataError
from hmarl.io import atomic_path
from hmarl.safe_load import guarded, read_weights
from hmarl.sl.cache import CHANNELS
from hmarl.sl.inputs import feature_mismatch

ENCODER_VERSION = "encoder-1"
NUM_PRIORS = len(CHANNELS)


class SharedEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, window: int, num_features: int, adjacency: torch.Tensor):
        super().__init__()
        d, br = cfg.d_model, cfg.branches
        branches: dict[str, nn.Module] = {}
        if br.transformer:
            branches["transformer"] = TransformerBranch(
                num_features, window, d, cfg.heads, cfg.scales, cfg.dropout
            )
        if br.lstm:
            branches["lstm"] = BiLSTMBranch(num_features, cfg.lstm_hidden, d)
        if br.cnn:
            branches["cnn"] = CNNBranch(num_features, cfg.cnn_channels, cfg.cnn_kernel, d)
        if br.graph:
            branches["graph"] = GraphBranch(num_features, d, cfg.graph_layers, adjacency)
        self.branches = nn.ModuleDict(branches)
        self.priors = cfg.append_sl_priors
        self.embed_dim = cfg.embed_dim
        self.learned_dim = cfg.embed_dim - (NUM_PRIORS if self.priors else 0)
        self.fuse = nn.Sequential(
            nn.LayerNorm(d * len(branches)),
            nn.Linear(d * len(branches), 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, self.learned_dim),
            nn.LayerNorm(self.learned_dim),
        )

    def learned(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, S, W, F)`` -> ``(B, S, learned_dim)``."""
        return self.fuse(torch.cat([branch(windows) for branch in self.branches.values()], -1))

    def forward(self, windows: torch.Tensor, priors: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S, W, F)`` (+ SL probabilities ``(B, S, 9)``; NaN means none) -> ``(B, S, embed_dim)``."""
        return self.embed(self.learned(windows), priors)

    def embed(self, z: torch.Tensor, priors: torch.Tensor | None) -> torch.Tensor:
        """The embedding from the fused learned part ``z`` (``(B, S, learned_dim)``) and the priors."""
        if not self.priors:
            return z
        if priors is None:
            priors = torch.full((*z.shape[:2], NUM_PRIORS), float("nan"), device=z.device)
        return torch.cat([z, torch.nan_to_num(priors.to(z.dtype), nan=1.0 / 3.0)], -1)


class PretrainHeads(nn.Module):
    """Masked reconstruction of the whole window and a forecast of the next ``k`` returns."""

    def __init__(self, learned_dim: int, window: int, num_features: int, forecast_k: int):
        super().__init__()
        self.window, self.num_features = window, num_features
        self.recon = nn.Linear(learned_dim, window * num_features)
        self.forecast = nn.Linear(learned_dim, forecast_k)
        # start at the constant forecast, so the head moves away from it only where the data pays
        nn.init.zeros_(self.forecast.weight)
        nn.init.zeros_(self.forecast.bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.recon(z).reshape(*z.shape[:-1], self.window, self.num_features)
        return recon, self.forecast(z)


def save_encoder(path: Path, encoder: SharedEncoder, heads: PretrainHeads, **meta) -> None:
    payload = {
        "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "heads": {k: v.detach().cpu() for k, v in heads.state_dict().items()},
        "version": ENCODER_VERSION,
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_encoder(
    path: str | Path, feature_names: list[str], symbols: list[str]
) -> tuple[SharedEncoder, PretrainHeads, dict]:
    """Rebuild an encoder; refuses one trained on another feature list or symbol universe."""
    path = Path(path)
    ckpt = read_weights(path)

    def build() -> tuple[SharedEncoder, PretrainHeads]:
        if list(ckpt["feature_names"]) != list(feature_names):
            raise DataError(
                feature_mismatch(list(ckpt["feature_names"]), list(feature_names), "checkpoint", "store")
            )
        if list(ckpt["symbols"]) != list(symbols):
            raise DataError(
                f"encoder was trained on another symbol universe ({len(ckpt['symbols'])} symbols)"
            )
        cfg = EncoderConfig(**ckpt["hparams"])
        s = len(symbols)
        encoder = SharedEncoder(cfg, ckpt["window"], len(feature_names), torch.zeros(s, s))
        encoder.load_state_dict(ckpt["encoder"])
        heads = PretrainHeads(encoder.learned_dim, ckpt["window"], len(feature_names), cfg.forecast_k)
        heads.load_state_dict(ckpt["heads"])
        return encoder.eval(), heads.eval()

    encoder, heads = guarded(path, build, "encoder checkpoint")
    return encoder, heads, {k: v for k, v in ckpt.items() if k not in ("encoder", "heads")}
