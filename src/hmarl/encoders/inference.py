"""Inference-only forward of the shared encoder's transformer branch, for the per-bar decision.

Equal to :class:`~hmarl.encoders.branches.TransformerBranch` in eval mode within float32 rounding
(tests/test_decider.py), and cheaper on CPU because it:

- computes attention with plain batched matmuls; ``torch.softmax`` is slow on rows shorter than a vector
  register (the pooled scales have 12 and 6 steps: ~5x slower than exp/sum by hand there), while the fused
  multi-head attention kernel of ``nn.TransformerEncoderLayer`` pays that and more per call;
- leaves steps of at least ``SOFTMAX_MIN_ROW`` to the fused layer (as fast there);
- applies the feed-forward output projection to the two summaries the branch keeps (last step and mean
  over steps) instead of every step: it is linear, so projecting the mean equals the mean of the projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hmarl.encoders.branches import TransformerBranch

SOFTMAX_MIN_ROW = 16  # rows at least this long go to torch.softmax (it vectorizes them well)


def _softmax(s: torch.Tensor) -> torch.Tensor:
    if s.shape[-1] >= SOFTMAX_MIN_ROW:
        return torch.softmax(s, -1)
    e = (s - s.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


def layer_summary(layer: nn.TransformerEncoderLayer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(last step, mean over steps)`` of a pre-norm GELU encoder layer's output on ``z`` (N, L, d)."""
    n, steps, d = z.shape
    attn = layer.self_attn
    heads = attn.num_heads
    dh = d // heads
    h = F.layer_norm(z, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, steps, 3, heads, dh).permute(2, 0, 3, 1, 4).contiguous().unbind(0)
    p = _softmax(torch.matmul(q, k.transpose(-1, -2)).mul_(dh**-0.5))
    a = torch.matmul(p, v).transpose(1, 2).reshape(n, steps, d)
    y = F.linear(a, attn.out_proj.weight, attn.out_proj.bias).add_(z)
    h = F.layer_norm(y, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    g = F.gelu(F.linear(h, layer.linear1.weight, layer.linear1.bias))
    ff = F.linear(torch.stack([g[:, -1], g.mean(1)], 1), layer.linear2.weight, layer.linear2.bias)
    return y[:, -1] + ff[:, 0], y.mean(1) + ff[:, 1]


def check_supported(branch: TransformerBranch) -> None:
    """The layers must be what :func:`layer_summary` computes (the branch builds them so)."""
    for layer in branch.layers:
        if not (layer.norm_first and layer.activation_relu_or_gelu == 2 and layer.self_attn.batch_first):
            raise ValueError("transformer branch: layer_summary needs pre-norm, GELU, batch-first layers")


def tokens(branch: TransformerBranch, x: torch.Tensor) -> torch.Tensor:
    """The branch's embedded steps ``(B*S, W, d)`` of windows ``x`` (B, S, W, F)."""
    return F.linear(x.reshape(-1, *x.shape[2:]), branch.embed.weight, branch.embed.bias).add_(branch.pos)


def scale_summary(branch: TransformerBranch, i: int, steps: torch.Tensor) -> list[torch.Tensor]:
    """The ``i``-th scale's (last, mean) summaries of :func:`tokens` (scales are independent: they can run on
    different threads)."""
    scale, layer = branch.scales[i], branch.layers[i]
    n = steps.shape[1] // scale
    z = steps[:, steps.shape[1] - n * scale :]  # drop the oldest remainder, keep the last bar
    if scale > 1:
        z = z.reshape(z.shape[0], n, scale, -1).mean(2)
    if n >= SOFTMAX_MIN_ROW:  # the fused layer is as fast here; it is the reference itself
        out = layer(z)
        return [out[:, -1], out.mean(1)]
    return list(layer_summary(layer, z))


def branch_output(branch: TransformerBranch, summaries: list[torch.Tensor], b: int, s: int) -> torch.Tensor:
    return branch.out(torch.cat(summaries, -1)).reshape(b, s, -1)


def transformer_forward(branch: TransformerBranch, x: torch.Tensor) -> torch.Tensor:
    """``branch(x)`` in eval mode: ``(B, S, W, F)`` -> ``(B, S, d)``."""
    steps = tokens(branch, x)
    summaries = [z for i in range(len(branch.scales)) for z in scale_summary(branch, i, steps)]
    return branch_output(branch, summaries, *x.shape[:2])
