"""Prefix state of the encoder's BiLSTM, CNN and graph branches (windows ``(B, S, W, F)`` -> ``(B, S, d)``).

    state = branch_prefix(branch, old)       # old: (B, S, W-1, F), the next window's older rows
    out = branch_complete(branch, state, x)  # x: (B, S, W, F) whose first W-1 rows are ``old``; == branch(x)

BiLSTM: the forward direction's state after the older rows, one step at complete; the backward direction
starts at the newest row, so complete runs it over the whole window. CNN: only positions whose receptive
field holds the newest row change; the state keeps the other positions each layer reads, complete
recomputes the rest. Graph: it reads only the last row and the window mean; its cost is the per-bar MLP and
message passing (the mean is ~10% of it), so it keeps nothing and complete is the forward. Eval mode only; complete never
writes into a state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, nn

from hmarl.encoders.branches import BiLSTMBranch, CNNBranch, GraphBranch, fold_symbols
from hmarl.sl.prefix import RecurrentPrefix, recurrent_prefix, recurrent_step, require_eval

# --- BiLSTM ---------------------------------------------------------------------------------------------


def _run_direction(rnn: nn.LSTM, x: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, c)`` ``(1, N, H)`` of one direction of ``rnn`` over batch-first ``x`` from zeros: the kernel
    ``rnn.forward`` calls, on that direction's parameters."""
    weights = [getattr(rnn, n) for n in rnn._flat_weights_names if n.endswith("_reverse") == reverse]
    zeros = x.new_zeros(1, x.shape[0], rnn.hidden_size)
    _, h, c = _VF.lstm(x, (zeros, zeros), weights, rnn.bias, 1, 0.0, False, False, True)
    return h, c


def lstm_branch_prefix(branch: BiLSTMBranch, old: torch.Tensor) -> RecurrentPrefix:
    """The forward direction's state after the older rows."""
    require_eval(branch)
    return recurrent_prefix(branch.rnn, *_run_direction(branch.rnn, fold_symbols(old), reverse=False))


def lstm_branch_complete(branch: BiLSTMBranch, state: RecurrentPrefix, x: torch.Tensor) -> torch.Tensor:
    require_eval(branch)
    b, s = x.shape[:2]
    rows = fold_symbols(x)
    h_fwd = recurrent_step(branch.rnn, state, rows[:, -1])
    h_bwd, _ = _run_direction(branch.rnn, rows.flip(1), reverse=True)  # newest row first
    return branch.out(torch.cat([h_fwd, h_bwd[0]], -1)).reshape(b, s, -1)


# --- CNN ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CNNPrefix:
    """Position-major ``(positions, N, C)``: a run of positions is then a plain matrix, so complete runs
    each conv as one matrix product per tap on views (a oneDNN convolution call costs over 100 us even on
    a few positions)."""

    contexts: tuple[torch.Tensor, ...]  # per conv: its input at [first - left, settled), zeros before 0
    pads: tuple[tuple[int, int], ...]  # per conv: its "same" zero padding (left, right)
    zeros: torch.Tensor  # (max right, N, C): the zero padding past the window's end
    settled_sum: torch.Tensor  # (N, C): the last layer summed over the positions the newest row leaves


def _same_padding(conv: nn.Conv1d) -> tuple[int, int]:
    """Zero padding (left, right) of a stride-1 ``padding="same"`` conv; the odd one goes right, as torch's."""
    if conv.padding != "same" or conv.stride != (1,) or conv.padding_mode != "zeros" or conv.groups != 1:
        raise ValueError(
            f"CNN prefix state needs stride-1 'same' zero-padded dense convolutions, got {conv!r}"
        )
    total = conv.dilation[0] * (conv.kernel_size[0] - 1)
    return total // 2, total - total // 2


def _affected_starts(pads: list[tuple[int, int]], window: int) -> list[int]:
    """First position of each layer's output (input projection, then each conv) that reads the newest row:
    a conv's output p reads its input up to p + right, and its own input at p (residual)."""
    starts = [window - 1]  # the input projection is pointwise
    for _, right in pads:
        starts.append(max(0, starts[-1] - right))
    return starts


def cnn_branch_prefix(branch: CNNBranch, old: torch.Tensor) -> CNNPrefix:
    """Runs the layers on the older rows laid out in a full window (placeholder newest row) and keeps,
    per conv, the positions of its input it will read that the newest row does not change."""
    require_eval(branch)
    if branch.inp.kernel_size != (1,):
        raise ValueError(f"CNN prefix state needs a pointwise input projection, got {branch.inp!r}")
    rows = fold_symbols(old)
    window = rows.shape[1] + 1
    pads = [_same_padding(conv) for conv in branch.convs]
    starts = _affected_starts(pads, window)
    h = branch.inp(F.pad(rows, (0, 0, 0, 1)).transpose(1, 2))  # (N, C, W); position W-1 is a placeholder
    contexts = []
    for conv, (left, _), settled, first in zip(branch.convs, pads, starts[:-1], starts[1:], strict=True):
        lo = first - left
        context = F.pad(h[..., max(lo, 0) : settled], (max(-lo, 0), 0))
        contexts.append(context.permute(2, 0, 1).contiguous())
        h = h + branch.act(conv(h))
    zeros = h.new_zeros(max(right for _, right in pads), *h.shape[:2])
    return CNNPrefix(tuple(contexts), tuple(pads), zeros, h[..., : starts[-1]].sum(-1))


def _conv_valid(conv: nn.Conv1d, full: torch.Tensor, positions: int) -> torch.Tensor:
    """``conv`` without padding on position-major ``full`` ``(L, N, C)``: ``(positions, N, C_out)``."""
    n, dilation = full.shape[1], conv.dilation[0]
    taps = conv.weight.permute(2, 1, 0).contiguous()  # (kernel, C_in, C_out)
    out = torch.addmm(conv.bias, full[:positions].reshape(positions * n, -1), taps[0])
    for j in range(1, taps.shape[0]):
        out.addmm_(full[j * dilation : j * dilation + positions].reshape(positions * n, -1), taps[j])
    return out.view(positions, n, -1)


def cnn_branch_complete(branch: CNNBranch, state: CNNPrefix, x: torch.Tensor) -> torch.Tensor:
    require_eval(branch)
    b, s, window = x.shape[:3]
    inp = branch.inp
    h = F.linear(x[:, :, -1].reshape(b * s, -1), inp.weight[..., 0], inp.bias).unsqueeze(0)  # position W-1
    for conv, context, (left, right) in zip(branch.convs, state.contexts, state.pads, strict=True):
        full = torch.cat([context, h, state.zeros[:right]])  # input at [first - left, W + right)
        positions = full.shape[0] - left - right  # output [first, W)
        h = full[left : left + positions] + branch.act(_conv_valid(conv, full, positions))
    mean = (state.settled_sum + h.sum(0)) / window
    return branch.out(torch.cat([h[-1], mean], -1)).reshape(b, s, -1)


# --- graph ----------------------------------------------------------------------------------------------


def graph_branch_prefix(branch: GraphBranch, old: torch.Tensor) -> None:
    require_eval(branch)
    return None


def graph_branch_complete(branch: GraphBranch, state: None, x: torch.Tensor) -> torch.Tensor:
    require_eval(branch)
    return branch(x)


# --- dispatch -------------------------------------------------------------------------------------------

PrefixFn = Callable[[nn.Module, torch.Tensor], Any]
CompleteFn = Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]

BRANCH_PREFIX: dict[type, tuple[PrefixFn, CompleteFn]] = {
    BiLSTMBranch: (lstm_branch_prefix, lstm_branch_complete),
    CNNBranch: (cnn_branch_prefix, cnn_branch_complete),
    GraphBranch: (graph_branch_prefix, graph_branch_complete),
}


def _pair(branch: nn.Module) -> tuple[PrefixFn, CompleteFn]:
    pair = BRANCH_PREFIX.get(type(branch))  # exact type: a subclass may compute something else
    if pair is None:
        raise ValueError(f"no prefix state for encoder branch {type(branch).__name__}")
    return pair


def branch_prefix(branch: nn.Module, old: torch.Tensor) -> Any:
    """State of the older rows ``old`` ``(B, S, W-1, F)`` of the next window."""
    return _pair(branch)[0](branch, old)


def branch_complete(branch: nn.Module, state: Any, x: torch.Tensor) -> torch.Tensor:
    """``branch(x)`` for windows ``x`` ``(B, S, W, F)`` from the state of their older rows."""
    return _pair(branch)[1](branch, state, x)
