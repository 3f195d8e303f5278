"""Prefix state (src/hmarl/sl/prefix.py, src/hmarl/encoders/prefix_branches.py): completing the state of a
window's older rows with its newest row gives the module's own eval-mode forward, at the full profile's sizes
(random weights), for any newest row, bar after bar, and never changes the state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from hmarl.encoders.branches import BiLSTMBranch, CNNBranch, GraphBranch
from hmarl.encoders.prefix_branches import BRANCH_PREFIX, branch_complete, branch_prefix
from hmarl.sl.models import MLPClassifier, RecurrentClassifier
from hmarl.sl.prefix import sl_complete, sl_prefix

W, F = 24, 23  # the full profile's window and feature count
ATOL = 1e-5


@dataclass(frozen=True)
class Kind:
    """A model kind: its module for ``symbols`` symbols, its prefix / complete pair, and how a batch of
    symbol windows ``(S, W, F)`` is laid out for it (SL: as is; branches: one bar, ``(1, S, W, F)``)."""

    build: Callable[[int], nn.Module]
    prefix: Callable
    complete: Callable
    layout: Callable[[torch.Tensor], torch.Tensor]


def _seeded(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make().eval()


def _sl(make: Callable[[], nn.Module]) -> Kind:
    return Kind(lambda s: _seeded(make), sl_prefix, sl_complete, lambda w: w)


def _branch(make: Callable[[int], nn.Module]) -> Kind:
    return Kind(lambda s: _seeded(lambda: make(s)), branch_prefix, branch_complete, lambda w: w.unsqueeze(0))


def _adjacency(symbols: int) -> torch.Tensor:
    return torch.softmax(torch.randn(symbols, symbols, generator=torch.Generator().manual_seed(1)), 1)


KINDS = {  # sizes of bench/act_latency.full_bundle (params.yaml, profile full)
    "mlp": _sl(lambda: MLPClassifier(W, F, hidden=64, layers=2, dropout=0.1)),
    "lstm": _sl(lambda: RecurrentClassifier("lstm", F, hidden=32, layers=1, dropout=0.1)),
    "gru": _sl(lambda: RecurrentClassifier("gru", F, hidden=32, layers=1, dropout=0.1)),
    "lstm-2-layers": _sl(lambda: RecurrentClassifier("lstm", F, hidden=32, layers=2, dropout=0.1)),
    "gru-3-layers": _sl(lambda: RecurrentClassifier("gru", F, hidden=32, layers=3, dropout=0.1)),
    "bilstm-branch": _branch(lambda s: BiLSTMBranch(F, hidden=32, d=64)),
    "cnn-branch": _branch(lambda s: CNNBranch(F, channels=32, kernel=3, d=64)),
    "cnn-branch-kernel-5": _branch(lambda s: CNNBranch(F, channels=32, kernel=5, d=64)),
    "graph-branch": _branch(lambda s: GraphBranch(F, d=64, layers=2, adjacency=_adjacency(s))),
}


def _series(bars: int, symbols: int, seed: int = 2) -> torch.Tensor:
    """Normalized features ``(bars, S, F)``."""
    return torch.randn(bars, symbols, F, generator=torch.Generator().manual_seed(seed))


def _window(series: torch.Tensor, t: int, window: int = W) -> torch.Tensor:
    """Symbol windows ``(S, window, F)`` of the bars ending at ``t``."""
    return series[t - window + 1 : t + 1].transpose(0, 1)


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if dataclasses.is_dataclass(state):
        state = [getattr(state, f.name) for f in dataclasses.fields(state)]
    if isinstance(state, tuple | list):
        return [t for item in state for t in _tensors(item)]
    return []


@pytest.mark.parametrize("symbols", [5, 143])
@pytest.mark.parametrize("name", list(KINDS))
@torch.inference_mode()
def test_completing_the_older_rows_with_any_newest_row_is_the_forward(name: str, symbols: int) -> None:
    kind = KINDS[name]
    module = kind.build(symbols)
    x = kind.layout(_window(_series(W, symbols), W - 1))
    state = kind.prefix(module, x[..., :-1, :])
    before = [t.clone() for t in _tensors(state)]
    other = x.clone()
    other[..., -1, :] = torch.randn(other[..., -1, :].shape, generator=torch.Generator().manual_seed(3))
    for window in (x, other, x):  # one state, two different newest rows, then the first again
        expected = module(window)
        torch.testing.assert_close(kind.complete(module, state, window), expected, atol=ATOL, rtol=0)
    assert not torch.allclose(module(x), module(other), atol=1e-3)  # the newest row matters
    for kept, now in zip(before, _tensors(state), strict=True):
        assert torch.equal(kept, now)  # complete never writes into the state


@pytest.mark.parametrize("name", list(KINDS))
@torch.inference_mode()
def test_bar_after_bar_the_next_prefix_comes_from_the_last_window(name: str) -> None:
    kind = KINDS[name]
    symbols, bars = 143, W + 3
    module = kind.build(symbols)
    series = _series(bars, symbols, seed=4)
    window = kind.layout(_window(series, W - 1))
    for t in range(W, bars):
        state = kind.prefix(module, window[..., 1:, :])  # known before bar t arrives
        window = kind.layout(_window(series, t))
        torch.testing.assert_close(kind.complete(module, state, window), module(window), atol=ATOL, rtol=0)


@pytest.mark.parametrize("window", [6, 12])
@pytest.mark.parametrize("kernel", [3, 5])
@torch.inference_mode()
def test_cnn_windows_short_enough_that_the_newest_row_reaches_every_position(
    window: int, kernel: int
) -> None:
    """Receptive fields then cross the window's start (the state holds the left zero padding too)."""
    branch = _seeded(lambda: CNNBranch(F, channels=32, kernel=kernel, d=64))
    x = _window(_series(window, 7), window - 1, window).unsqueeze(0)
    state = branch_prefix(branch, x[..., :-1, :])
    torch.testing.assert_close(branch_complete(branch, state, x), branch(x), atol=ATOL, rtol=0)


@torch.inference_mode()
def test_branches_take_several_bars_at_once() -> None:
    x = torch.randn(2, 5, W, F, generator=torch.Generator().manual_seed(5))
    for name in ("bilstm-branch", "cnn-branch", "graph-branch"):
        branch = KINDS[name].build(5)
        state = branch_prefix(branch, x[..., :-1, :])
        torch.testing.assert_close(branch_complete(branch, state, x), branch(x), atol=ATOL, rtol=0)


def test_the_registry_covers_the_three_branches() -> None:
    assert {BiLSTMBranch, CNNBranch, GraphBranch} <= set(BRANCH_PREFIX)


@pytest.mark.parametrize("name", list(KINDS))
def test_a_module_in_training_mode_is_refused(name: str) -> None:
    kind = KINDS[name]
    module = kind.build(5)
    x = kind.layout(_window(_series(W, 5), W - 1))
    state = kind.prefix(module, x[..., :-1, :])
    module.train()
    with pytest.raises(ValueError, match="eval mode"):
        kind.prefix(module, x[..., :-1, :])
    with pytest.raises(ValueError, match="eval mode"):
        kind.complete(module, state, x)


def test_unknown_kinds_are_refused() -> None:
    x = torch.zeros(1, 5, W, F)
    with pytest.raises(ValueError, match="Identity"):
        branch_prefix(nn.Identity(), x[..., :-1, :])
    with pytest.raises(ValueError, match="Identity"):
        branch_complete(nn.Identity(), None, x)
    with pytest.raises(ValueError, match="Linear"):
        sl_prefix(nn.Linear(F, 3).eval(), x[0, :, :-1])
    bidirectional = KINDS["lstm"].build(5)
    bidirectional.rnn = nn.LSTM(F, 32, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="recurrent classifier"):
        sl_prefix(bidirectional, x[0, :, :-1])
    strided = KINDS["cnn-branch"].build(5)
    strided.convs[0] = nn.Conv1d(32, 32, 3, stride=2)
    with pytest.raises(ValueError, match="same"):
        branch_prefix(strided, x[..., :-1, :])


def test_an_mlp_refuses_older_rows_of_another_window() -> None:
    mlp = KINDS["mlp"].build(5)
    with pytest.raises(ValueError, match="23 older rows"):
        sl_prefix(mlp, torch.zeros(5, W, F))
