"""Prefix state of the SL classifiers: what a window's W-1 older rows determine, computed between bars.

    state = sl_prefix(model, old)        # old: (N, W-1, F), the rows the next window shares with this one
    logits = sl_complete(model, state, x) # x: (N, W, F) whose first W-1 rows are ``old``; == model(x)

MLP: the flattened window enters ``body[0]`` (a Linear over ``W * step_dim``), so its pre-activation is a sum
of per-bar blocks; the state is the bias plus the W-1 older bars' blocks, complete adds the newest bar's
block and runs the rest. LSTM / GRU: the state is the hidden state after the older rows, per layer, with
the part of the next step's gates it fixes; complete runs that step on the newest row. Eval mode only (dropout is then the identity, and is skipped). ``complete`` never
writes into the state, so one state may be completed with several newest rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from hmarl.sl.models import MLPClassifier, RecurrentClassifier


def require_eval(module: nn.Module) -> None:
    """Prefix / complete reproduce the eval-mode forward only (no dropout sampled)."""
    if module.training:
        raise ValueError(f"prefix state needs {type(module).__name__} in eval mode (call .eval())")


@dataclass(frozen=True)
class RecurrentPrefix:
    """Per layer of an LSTM / GRU (one direction): the state after the older rows, and the part of the
    newest step's gates it fixes, so that step costs one small matrix product and the gate arithmetic."""

    hidden: tuple[torch.Tensor, ...]  # h (N, H)
    cells: tuple[torch.Tensor, ...]  # LSTM: c (N, H); GRU: none
    recurrent: tuple[torch.Tensor, ...]  # h W_hh^T + b_hh; LSTM: + b_ih too (its gates are plain sums)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


def _layer(rnn: nn.LSTM | nn.GRU, layer: int) -> tuple[torch.Tensor, ...]:
    """``(w_ih, w_hh, b_ih, b_hh)`` of one layer's forward direction (biases None without bias)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return tuple(getattr(rnn, f"{n}_l{layer}", None) for n in names)


def recurrent_prefix(
    rnn: nn.LSTM | nn.GRU, hidden: torch.Tensor, cells: torch.Tensor | None = None
) -> RecurrentPrefix:
    """From the forward direction's state ``hidden`` (and LSTM ``cells``) ``(layers, N, H)`` after the
    older rows."""
    recurrent = []
    for layer, h in enumerate(hidden):
        _, w_hh, b_ih, b_hh = _layer(rnn, layer)
        bias = b_ih + b_hh if cells is not None and b_ih is not None else b_hh
        recurrent.append(_affine(h, w_hh, bias))
    return RecurrentPrefix(tuple(hidden), () if cells is None else tuple(cells), tuple(recurrent))


def recurrent_step(rnn: nn.LSTM | nn.GRU, state: RecurrentPrefix, x: torch.Tensor) -> torch.Tensor:
    """The last layer's ``h`` after one step on ``x`` ``(N, F)`` from ``state`` (the gate arithmetic of
    ``torch.nn.LSTM`` / ``GRU``)."""
    for layer, (h, rec) in enumerate(zip(state.hidden, state.recurrent, strict=True)):
        w_ih, _, b_ih, _ = _layer(rnn, layer)
        size = h.shape[1]
        if state.cells:  # LSTM gates i, f, g, o
            gates = torch.addmm(rec, x, w_ih.t())
            sig = torch.sigmoid(gates)
            c = torch.addcmul(
                sig[:, size : 2 * size] * state.cells[layer],
                sig[:, :size],
                torch.tanh(gates[:, 2 * size : 3 * size]),
            )
            x = sig[:, 3 * size :] * torch.tanh(c)
        else:  # GRU gates r, z, n; n reads r * (W_hn h + b_hn)
            gi = _affine(x, w_ih, b_ih)
            r, z = torch.sigmoid(gi[:, : 2 * size] + rec[:, : 2 * size]).chunk(2, 1)
            n = torch.tanh(torch.addcmul(gi[:, 2 * size :], r, rec[:, 2 * size :]))
            x = torch.addcmul(n, z, h - n)  # (1 - z) n + z h
    return x


def _mlp_prefix(model: MLPClassifier, old: torch.Tensor) -> torch.Tensor:
    first = model.body[0]
    older = model.step(old).flatten(1)  # (N, (W-1) * step_dim)
    if older.shape[1] + model.step.out_features != first.in_features:
        window = first.in_features // model.step.out_features
        raise ValueError(f"MLP of window {window} needs {window - 1} older rows, got {old.shape[1]}")
    return F.linear(older, first.weight[:, : older.shape[1]], first.bias)


def _mlp_complete(model: MLPClassifier, partial: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    first = model.body[0]
    newest = model.step(x[:, -1])  # (N, step_dim)
    h = torch.addmm(partial, newest, first.weight[:, -newest.shape[1] :].t())
    for layer in islice(model.body, 1, None):  # slicing the Sequential would build a module per call
        h = layer(h)
    return model.head(h)


def _rnn(model: RecurrentClassifier) -> nn.LSTM | nn.GRU:
    rnn = model.rnn
    if type(rnn) not in (nn.LSTM, nn.GRU) or rnn.bidirectional or not rnn.batch_first:
        raise ValueError(f"no prefix state for a recurrent classifier over {rnn!r}")
    if isinstance(rnn, nn.LSTM) and rnn.proj_size:
        raise ValueError("no prefix state for an LSTM with proj_size")
    return rnn


def _recurrent_prefix(model: RecurrentClassifier, old: torch.Tensor) -> RecurrentPrefix:
    rnn = _rnn(model)
    _, hidden = rnn(old)
    return recurrent_prefix(rnn, *hidden) if isinstance(hidden, tuple) else recurrent_prefix(rnn, hidden)


def _recurrent_complete(model: RecurrentClassifier, state: RecurrentPrefix, x: torch.Tensor) -> torch.Tensor:
    return model.head(recurrent_step(_rnn(model), state, x[:, -1]))


def _check(model: nn.Module) -> None:
    require_eval(model)
    if not isinstance(model, MLPClassifier | RecurrentClassifier):
        raise ValueError(f"no prefix state for SL model {type(model).__name__}")


def sl_prefix(model: nn.Module, old: torch.Tensor) -> torch.Tensor | RecurrentPrefix:
    """State of the W-1 older rows ``old`` ``(N, W-1, F)`` of the next window."""
    _check(model)
    if isinstance(model, MLPClassifier):
        return _mlp_prefix(model, old)
    return _recurrent_prefix(model, old)


def sl_complete(model: nn.Module, state: torch.Tensor | RecurrentPrefix, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, 3)`` of windows ``x`` ``(N, W, F)`` from the state of their older rows: ``model(x)``."""
    _check(model)
    if isinstance(model, MLPClassifier):
        return _mlp_complete(model, state, x)
    return _recurrent_complete(model, state, x)
