"""The three SL classifiers over a ``(window, feature)`` input, and their checkpoint format.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so ``torch.load(weights_only=True)``
opens it: ``state_dict``, ``model`` (name), ``version``, ``hparams``, ``window``, ``feature_names``,
``temperature``, ``fold``, ``split`` (inner split, -1 for the fold's model), ``fit_ranges`` (bar ranges
whose labels trained it), ``fingerprint`` (of the feature store).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hmarl.errors import DataError
from hmarl.io import atomic_path
from hmarl.safe_load import guarded, read_weights
from hmarl.sl.inputs import feature_mismatch
from hmarl.sl.params import SLModelParams

MODEL_NAMES = ("mlp", "lstm", "gru")
NUM_CLASSES = 3
# bump when a model's architecture changes, so caches built by an older model are told apart
MODEL_VERSIONS = {"mlp": "mlp-1", "lstm": "lstm-1", "gru": "gru-1"}


class MLPClassifier(nn.Module):
    """Each bar's features are first projected by one shared linear map (``step_dim`` per bar), then the
    flattened window goes through the MLP: far fewer weights than a dense layer on all 24 x 23 inputs,
    which overfits small train ranges."""

    def __init__(
        self, window: int, num_features: int, hidden: int, layers: int, dropout: float, step_dim: int = 8
    ):
        super().__init__()
        self.step = nn.Linear(num_features, step_dim)
        dims = [window * step_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(dims[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W, F) -> logits (N, 3)
        return self.head(self.body(self.step(x).flatten(1)))


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: str, num_features: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(
            num_features, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1]))


# On CPU, recurrent layers run ~2x faster on chunks of ~1k sequences than on one 10k batch (activations stay
# in cache); on CUDA one big batch is best.
INFERENCE_CHUNK = 1024


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, 3)`` of windows ``(N, W, F)`` in eval mode, chunked on CPU."""
    model.eval()
    chunk = x.shape[0] if x.is_cuda else INFERENCE_CHUNK
    if x.shape[0] <= chunk:
        return model(x)
    return torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def build_model(name: str, params: SLModelParams, window: int, num_features: int) -> nn.Module:
    if name == "mlp":
        return MLPClassifier(window, num_features, params.hidden, params.layers, params.dropout)
    if name in ("lstm", "gru"):
        return RecurrentClassifier(name, num_features, params.hidden, params.layers, params.dropout)
    raise ValueError(f"unknown SL model {name!r} (known: {MODEL_NAMES})")


def save_checkpoint(path: Path, module: nn.Module, **meta) -> None:
    payload = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}, **meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, feature_names: list[str]) -> tuple[nn.Module, dict]:
    """Rebuild a classifier; refuses a checkpoint trained on another feature list."""
    path = Path(path)
    ckpt = read_weights(path)

    def build() -> nn.Module:
        trained_on = list(ckpt["feature_names"])
        if trained_on != list(feature_names):
            raise DataError(feature_mismatch(trained_on, list(feature_names), "checkpoint", "store"))
        model = build_model(ckpt["model"], SLModelParams(**ckpt["hparams"]), ckpt["window"], len(trained_on))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()

    model = guarded(path, build, "SL classifier checkpoint")
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}
