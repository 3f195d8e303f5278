"""Int8 head weights (``agent.head_weights: int8``): the per-symbol heads' first layers on an int8 grid.

Why: at a desk's decision the per-symbol heads are the largest memory read, 143 x 256 x 128 float32 weights
= 18.7 MB per pass and three passes at a master bar (critic and actor under the directive in force, actor
under the master's new one). On a small CPU that read is bandwidth-bound; int8 reads a quarter of it.

Where: :func:`quantize_heads_` rounds the trained weights at the end of symbol training, in the model, so
every later step (master training, the backtests, the gate, ``hmarl act``) runs the quantized function:
what is evaluated is what a desk runs. Each (symbol, hidden unit) column gets a power-of-two scale, the
smallest with ``|w| <= 127 x scale``: the grid is exact in float32 and recoverable from the weights alone
(no extra checkpoint state), and quantizing twice changes nothing.

How it runs: the torch path computes it with the float32 weights on the grid (training, backtests, the
reference decision); :class:`Int8Heads` reads the int8 values with a small C kernel (``int8_heads.c``,
prebuilt at install or compiled on first use: hmarl/cbuild.py) for one row of symbols, the same function
within float32 rounding. Heads whose weights are not on the grid (``float32``, or fine-tuned after quantizing) take the torch path.
"""

from __future__ import annotations

import ctypes

import torch

from hmarl import cbuild
from hmarl.agents.symbol import BatchedMLP, SymbolAgent

C_SOURCE = "int8_heads.c"  # this module's kernel (hmarl/cbuild.py KERNELS); named so the DVC deps include it
QMAX = 127


def pow2_scale(w: torch.Tensor) -> torch.Tensor:
    """``(S, D, H)`` -> ``(S, 1, H)``: per column the smallest power of two ``s`` with max |w| <= 127 s
    (1 for an all-zero column)."""
    m = w.abs().amax(-2, keepdim=True) / QMAX
    mantissa, exponent = torch.frexp(m)  # m = mantissa x 2^exponent, mantissa in [0.5, 1)
    scale = torch.ldexp(torch.ones_like(m), exponent - (mantissa == 0.5).int())
    return torch.where(m > 0, scale, torch.ones_like(m))


def _grid(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = pow2_scale(w)
    return torch.round(w / scale).clamp_(-QMAX, QMAX), scale


def rounded(w: torch.Tensor) -> torch.Tensor:
    """``w`` (S, D, H) rounded to its int8 grid, same dtype."""
    q, scale = _grid(w.detach().float())
    return (q * scale).to(w.dtype)


@torch.no_grad()
def quantize_heads_(agent: SymbolAgent) -> dict[str, float]:
    """Round the first-layer weights of ``agent``'s per-symbol heads to the int8 grid, in place. Returns
    the largest weight change per head (empty for a shared head: one 130 kB matrix, no gain)."""
    changes = {}
    for name in ("actor", "critic"):
        mlp = getattr(agent, name)
        if isinstance(mlp, BatchedMLP):
            w = rounded(mlp.w1)
            changes[name] = float((w - mlp.w1).abs().max())
            mlp.w1.copy_(w)
    return changes


def int8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q int8 (S, D, H), scale (S, H))`` when ``w`` lies on the grid exactly, else None."""
    w = w.detach().float()
    q, scale = _grid(w)
    if not torch.equal(q * scale, w):
        return None
    return q.to(torch.int8).contiguous(), scale.squeeze(-2).contiguous()


def _bind(lib: ctypes.CDLL) -> None:
    lib.hm_int8_heads.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3
    lib.hm_int8_heads.restype = None


def load() -> ctypes.CDLL | None:
    return cbuild.load("int8_heads", _bind)


class Int8Heads:
    """A :class:`BatchedMLP` on the int8 grid applied to one row of symbols, ``(1, S, d_in)`` ->
    ``(1, S, d_out)``, reading its int8 first-layer weights; :meth:`of` builds one where it applies."""

    def __init__(self, mlp: BatchedMLP, q: torch.Tensor, scale: torch.Tensor, lib: ctypes.CDLL):
        self.mlp, self.q, self.scale, self.lib = mlp, q, scale, lib
        self.b1 = mlp.b1.detach().reshape(q.shape[0], -1).contiguous()

    @classmethod
    def of(cls, mlp: torch.nn.Module) -> Int8Heads | None:
        """None unless ``mlp`` is a float32 CPU :class:`BatchedMLP` on the grid and the kernel builds here."""
        if not isinstance(mlp, BatchedMLP) or mlp.w1.dtype != torch.float32 or mlp.w1.device.type != "cpu":
            return None
        weights = int8_weights(mlp.w1)
        lib = load() if weights is not None else None
        return None if lib is None else cls(mlp, *weights, lib)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        s, d, hidden = self.q.shape
        if h.shape != (1, s, d):
            raise ValueError(f"int8 heads: input {tuple(h.shape)}, expected (1, {s}, {d})")
        x = h[0].float().contiguous()
        u = torch.empty(s, hidden)
        self.lib.hm_int8_heads(
            x.data_ptr(),
            self.q.data_ptr(),
            self.scale.data_ptr(),
            self.b1.data_ptr(),
            u.data_ptr(),
            s,
            d,
            hidden,
        )
        return self.mlp.output(u.tanh_().unsqueeze(1))
