"""Inference-only forward of the shared encoder's transformer branch for the per-bar decision, split into a
prefix (the window's older rows, known before the newest bar arrives) and a completion (what the newest bar
changes). ``transformer_complete(branch, transformer_prefix(branch, x[:, :, :-1]), x)`` equals
``branch(x)`` in eval mode within float32 rounding (tests/test_decider.py).

At each time scale the pooled steps are ``n`` groups of ``scale`` bars ending at the newest bar; the last
group holds the newest bar, the ``n - 1`` others are known in the prefix, with their layer-norm, queries,
keys, values and their attention over each other (per query: the normalized output ``a`` and the
log-sum-exp ``lse`` of its scores). The newest step adds one key: with its score ``s`` for query ``i``,
softmax over all keys is the old output mixed with the new value, weight ``sigmoid(s - lse_i)``:

    attn_i = a_i + sigmoid(s_i - lse_i) * (v_new - a_i)

so the completion is O(steps) elementwise work for the old queries, one full attention row for the new one,
and the position-wise rest of the layer (out projection, layer norm, feed-forward: every step's attention
output changed). The feed-forward output projection is linear and the branch keeps only the last step and
the mean over steps, so it is applied to those two summaries only.

A scale's completion runs as one C pass per window where the kernel is available (``attention_complete.c``,
prebuilt at install or compiled on first use by :mod:`hmarl.cbuild`; ~40 small torch ops otherwise, most of
a decision's transformer time);
:func:`_complete_torch` is the same arithmetic in torch, used without a compiler or on CUDA, and the
reference the kernel is tested against (tests/test_native_kernels.py).
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hmarl import cbuild
from hmarl.encoders.branches import TransformerBranch, fold_symbols


@dataclass(frozen=True)
class ScalePrefix:
    """One time scale's known part; tensors ``(N, n - 1, d)`` unless said otherwise (N windows; heads side
    by side as in the layer's own layout)."""

    partial: torch.Tensor | None  # (N, d): sum of the last group's older tokens (None at scale 1)
    z: torch.Tensor  # pooled older steps (the layer's input)
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    a: torch.Tensor  # attention output over the older keys only
    lse: torch.Tensor  # (N, n - 1, H) log-sum-exp of those (scaled) scores
    heads: torch.Tensor  # (H, d) indicator of each head's dimensions (per-head sums as matrix products:
    # dot products of width dh are too small for anything else)


def check_supported(branch: TransformerBranch) -> None:
    """The layers must be what this module computes (the branch builds them so)."""
    for layer in branch.layers:
        if not (layer.norm_first and layer.activation_relu_or_gelu == 2 and layer.self_attn.batch_first):
            raise ValueError("transformer branch: inference needs pre-norm, GELU, batch-first layers")


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _in_proj(layer: nn.TransformerEncoderLayer, z: torch.Tensor) -> torch.Tensor:
    """Queries, keys and values side by side ``(..., 3 d)`` of pooled steps ``z`` (..., d)."""
    attn = layer.self_attn
    return F.linear(_layer_norm(layer.norm1, z), attn.in_proj_weight, attn.in_proj_bias)


def _qkv(layer: nn.TransformerEncoderLayer, z: torch.Tensor) -> torch.Tensor:
    """Queries, keys, values ``(3, N, L, d)`` of pooled steps ``z`` (N, L, d)."""
    return _in_proj(layer, z).view(*z.shape[:2], 3, z.shape[-1]).permute(2, 0, 1, 3)


def _heads(layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    attn = layer.self_attn
    return torch.eye(attn.num_heads).repeat_interleave(attn.head_dim, 1)


def _pool(branch: TransformerBranch, tokens: torch.Tensor, i: int) -> torch.Tensor:
    """Scale ``i``'s complete groups of older tokens ``(N, n - 1, d)``: the window's ``n`` groups end at the
    newest bar, the oldest remainder is dropped; ``tokens`` are the window's ``W - 1`` older steps."""
    scale = branch.scales[i]
    n = (tokens.shape[1] + 1) // scale
    z = tokens[:, tokens.shape[1] + 1 - n * scale : tokens.shape[1] + 1 - scale]
    return z.reshape(z.shape[0], n - 1, scale, z.shape[-1]).mean(2) if scale > 1 else z


def transformer_prefix(branch: TransformerBranch, old: torch.Tensor) -> list[ScalePrefix]:
    """The known part of every scale from the window's ``W - 1`` older rows ``old`` (B, S, W - 1, F)."""
    tokens = F.linear(fold_symbols(old), branch.embed.weight, branch.embed.bias)
    tokens = tokens.add_(branch.pos[: old.shape[2]])
    states = []
    for i, (scale, layer) in enumerate(zip(branch.scales, branch.layers, strict=True)):
        z = _pool(branch, tokens, i)
        n, steps, d = z.shape
        heads = layer.self_attn.num_heads
        q, k, v = (t.view(n, steps, heads, d // heads).transpose(1, 2) for t in _qkv(layer, z))
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_((d // heads) ** -0.5)  # (N, H, n - 1, n - 1)
        lse = torch.logsumexp(scores, -1)
        a = torch.matmul(scores.sub_(lse.unsqueeze(-1)).exp_(), v)
        partial = tokens[:, tokens.shape[1] + 1 - scale :].sum(1) if scale > 1 else None
        flat = [t.transpose(1, 2).reshape(n, steps, d) for t in (q, k, v, a)]
        states.append(ScalePrefix(partial, z, *flat, lse.transpose(1, 2).contiguous(), _heads(layer)))
    return states


def newest_tokens(branch: TransformerBranch, x: torch.Tensor) -> torch.Tensor:
    """The newest row's embedded step ``(B*S, d)`` of windows ``x`` (B, S, W, F)."""
    newest = x[:, :, -1].reshape(-1, x.shape[-1])
    return F.linear(newest, branch.embed.weight, branch.embed.bias).add_(branch.pos[x.shape[2] - 1])


def scale_complete(
    branch: TransformerBranch, state: ScalePrefix, i: int, newest: torch.Tensor
) -> list[torch.Tensor]:
    """Scale ``i``'s (last step, mean over steps) summaries of the layer output, given its prefix and the
    newest token (:func:`newest_tokens`)."""
    scale, layer = branch.scales[i], branch.layers[i]
    lib = _native(layer, state)
    if lib is not None:
        return _complete_native(lib, layer, state, newest, scale)
    z_new = (state.partial + newest).div_(scale) if state.partial is not None else newest  # (N, d)
    return _complete_torch(layer, state, _in_proj(layer, z_new), z_new)


def _complete_torch(
    layer: nn.TransformerEncoderLayer, state: ScalePrefix, qkv: torch.Tensor, z_new: torch.Tensor
) -> list[torch.Tensor]:
    attn = layer.self_attn
    q, k, v = qkv.view(-1, 3, qkv.shape[-1] // 3).unbind(1)  # (N, d) each
    heads = state.heads
    scale_dh = attn.head_dim**-0.5
    # the older queries gain one key: their output moves towards the new value
    s_old = ((state.q * k.unsqueeze(1)) @ heads.T).mul_(scale_dh)  # (N, n - 1, H)
    w = torch.sigmoid(s_old.sub_(state.lse)) @ heads  # (N, n - 1, d)
    n, steps, d = state.a.shape
    a = torch.empty(n, steps + 1, d)
    torch.addcmul(state.a, w, v.unsqueeze(1) - state.a, out=a[:, :-1])
    # the newest query attends to every key
    s_new = torch.cat([(state.k * q.unsqueeze(1)) @ heads.T, ((q * k) @ heads.T).unsqueeze(1)], 1)
    p = torch.softmax(s_new.mul_(scale_dh), 1) @ heads  # (N, n, d): each head's weight on its dimensions
    torch.sum(p[:, :-1] * state.v, 1, out=a[:, -1]).addcmul_(p[:, -1], v)
    y = F.linear(a, attn.out_proj.weight, attn.out_proj.bias)
    y[:, :-1] += state.z
    y[:, -1] += z_new
    g = F.gelu(F.linear(_layer_norm(layer.norm2, y), layer.linear1.weight, layer.linear1.bias))
    ff = F.linear(torch.stack([g[:, -1], g.mean(1)], 1), layer.linear2.weight, layer.linear2.bias)
    return [y[:, -1] + ff[:, 0], y.mean(1) + ff[:, 1]]


# --------------------------------------------------------------------------- the C path of a scale
C_SOURCE = (
    "attention_complete.c"  # this module's kernel (hmarl/cbuild.py KERNELS); named so the DVC deps include it
)
MAX_WIDTH, MAX_SCORES = 512, 1024  # the kernel's on-stack rows (MAXD: 3 d and ff) and scores (MAXS)
_P = ctypes.POINTER(ctypes.c_float)


class HmLayer(ctypes.Structure):
    """Mirror of the C ``HmLayer`` (checked against the C layout at load): one layer's weights, matrices
    input-major."""

    _fields_ = [
        (n, _P) for n in ("g1", "bn1", "wiT", "bi", "woT", "bo", "g2", "bn2", "w1T", "b1", "w2T", "b2")
    ]
    _fields_ += [(n, ctypes.c_int64) for n in ("d", "H", "ff")]
    _fields_ += [(n, ctypes.c_float) for n in ("eps1", "eps2", "sdh")]


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bind(lib: ctypes.CDLL) -> None:
    cbuild.check_layout(lib, "hm_layer", HmLayer)
    p = ctypes.c_void_p
    lib.hm_attention_complete.argtypes = [ctypes.POINTER(HmLayer)] + [p] * 8 + [ctypes.c_float, p]
    lib.hm_attention_complete.argtypes += [ctypes.c_int64] * 2
    lib.hm_attention_complete.restype = None


def _native(layer: nn.TransformerEncoderLayer, state: ScalePrefix) -> ctypes.CDLL | None:
    """The compiled kernel where it applies (CPU float32, widths within its bounds), else None."""
    a = state.a
    if a.device.type != "cpu" or a.dtype != torch.float32:
        return None
    if max(3 * a.shape[-1], layer.linear1.out_features) > MAX_WIDTH:
        return None
    if (a.shape[1] + 1) * layer.self_attn.num_heads > MAX_SCORES:
        return None
    return cbuild.load("attention_complete", _bind)


def _layer(layer: nn.TransformerEncoderLayer) -> ctypes.pointer:
    """The layer's :class:`HmLayer`, cached per layer until a weight changes (it holds the tensors it
    points into)."""
    attn = layer.self_attn
    named = {
        "g1": layer.norm1.weight,
        "bn1": layer.norm1.bias,
        "wiT": attn.in_proj_weight.t(),
        "bi": attn.in_proj_bias,
        "woT": attn.out_proj.weight.t(),
        "bo": attn.out_proj.bias,
        "g2": layer.norm2.weight,
        "bn2": layer.norm2.bias,
        "w1T": layer.linear1.weight.t(),
        "b1": layer.linear1.bias,
        "w2T": layer.linear2.weight.t(),
        "b2": layer.linear2.bias,
    }
    key = tuple((t._version, t.data_ptr()) for t in named.values())
    cached = _LAYERS.get(layer)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            tensors = {n: t.detach().float().contiguous() for n, t in named.items()}
        ptrs = {n: ctypes.cast(t.data_ptr(), _P) for n, t in tensors.items()}
        sizes = {"d": attn.embed_dim, "H": attn.num_heads, "ff": layer.linear1.out_features}
        eps = {"eps1": layer.norm1.eps, "eps2": layer.norm2.eps, "sdh": attn.head_dim**-0.5}
        cached = (key, tensors, ctypes.pointer(HmLayer(**ptrs, **sizes, **eps)))
        _LAYERS[layer] = cached
    return cached[2]


def _complete_native(
    lib: ctypes.CDLL,
    layer: nn.TransformerEncoderLayer,
    state: ScalePrefix,
    newest: torch.Tensor,
    scale: int,
) -> list[torch.Tensor]:
    n, steps, d = state.a.shape
    old = [t.contiguous() for t in (state.q, state.k, state.v, state.a, state.z, state.lse)]
    newest = newest.contiguous()
    partial = state.partial.contiguous().data_ptr() if state.partial is not None else None
    out = torch.empty(n, 2, d)
    lib.hm_attention_complete(
        _layer(layer),
        *(t.data_ptr() for t in old),
        newest.data_ptr(),
        partial,
        scale,
        out.data_ptr(),
        n,
        steps,
    )
    return list(out.unbind(1))


def branch_output(branch: TransformerBranch, summaries: list[torch.Tensor], b: int, s: int) -> torch.Tensor:
    return branch.out(torch.cat(summaries, -1)).reshape(b, s, -1)


def transformer_complete(
    branch: TransformerBranch, states: list[ScalePrefix], x: torch.Tensor
) -> torch.Tensor:
    """``branch(x)`` in eval mode from the prefix of ``x``'s older rows: ``(B, S, W, F)`` -> ``(B, S, d)``."""
    newest = newest_tokens(branch, x)
    summaries = [z for i, state in enumerate(states) for z in scale_complete(branch, state, i, newest)]
    return branch_output(branch, summaries, *x.shape[:2])


def transformer_forward(branch: TransformerBranch, x: torch.Tensor) -> torch.Tensor:
    """``branch(x)`` in eval mode (prefix and completion at once): ``(B, S, W, F)`` -> ``(B, S, d)``."""
    return transformer_complete(branch, transformer_prefix(branch, x[:, :, :-1]), x)
