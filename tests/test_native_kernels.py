"""The C inference kernels against their torch paths, and where each applies: int8 head weights
(hmarl/agents/int8_heads.py: the grid, the kernel) and the transformer's scale completion
(hmarl/encoders/attention_complete.c via hmarl/encoders/inference.py). Without a compiler both run in torch."""

from __future__ import annotations

import pytest
import torch

from env_fixtures import run_without_compiler
from hmarl import cbuild
from hmarl.agents.int8_heads import QMAX, Int8Heads, int8_weights, load, pow2_scale, quantize_heads_
from hmarl.agents.symbol import BatchedMLP, SharedMLP
from hmarl.encoders import inference
from hmarl.encoders.branches import TransformerBranch

# skipped only where the kernels can be neither loaded nor built: with a compiler a kernel that fails to build
# fails these tests (tests/test_cbuild.py checks the build itself)
needs_kernel = pytest.mark.skipif(
    load() is None and cbuild.compiler() is None, reason="no C compiler and no prebuilt kernels here"
)


class Heads(torch.nn.Module):
    def __init__(self, actor: torch.nn.Module, critic: torch.nn.Module):
        super().__init__()
        self.actor, self.critic = actor, critic


def heads(symbols: int, d: int, hidden: int, seed: int = 0) -> Heads:
    g = torch.Generator().manual_seed(seed)
    return Heads(BatchedMLP(symbols, d, hidden, 7, 0.1, g), BatchedMLP(symbols, d, hidden, 1, 1.0, g))


def test_rounding_puts_every_column_on_its_power_of_two_grid_and_is_idempotent():
    agent = heads(9, 40, 16)
    before = agent.actor.w1.detach().clone()
    changes = quantize_heads_(agent)
    w = agent.actor.w1.detach()
    scale = pow2_scale(before)
    assert torch.equal(torch.log2(scale), torch.log2(scale).round())  # powers of two
    q = w / scale
    assert torch.equal(q, q.round()) and q.abs().max() <= QMAX
    assert q.abs().amax(-2).min() >= QMAX // 2 + 1  # the smallest such scale: 7 bits of each column used
    assert ((w - before).abs() <= scale / 2).all()  # round to nearest
    assert changes["actor"] == pytest.approx(float((w - before).abs().max()))
    assert changes["actor"] > 0 and set(changes) == {"actor", "critic"}
    assert quantize_heads_(agent) == {"actor": 0.0, "critic": 0.0}  # twice changes nothing
    assert torch.equal(agent.actor.w1, w)
    q8, s = int8_weights(w)
    assert q8.dtype == torch.int8 and torch.equal(q8.float() * s.unsqueeze(-2), w)
    assert int8_weights(before) is None  # float32 weights are not on the grid


def test_a_shared_head_is_left_in_float32():
    g = torch.Generator().manual_seed(0)
    agent = Heads(SharedMLP(5, 8, 4, 7, 0.1, 3, g), SharedMLP(5, 8, 4, 1, 1.0, 3, g))
    before = agent.actor.w1.detach().clone()
    assert quantize_heads_(agent) == {}
    assert torch.equal(agent.actor.w1, before) and Int8Heads.of(agent.actor) is None


@needs_kernel
@pytest.mark.parametrize(("symbols", "d", "hidden"), [(143, 256, 128), (3, 5, 300)])
def test_the_kernel_is_the_torch_forward_on_the_grid(symbols, d, hidden):
    """The seed's sizes and odd ones (more hidden units than the kernel's chunk of 256)."""
    agent = heads(symbols, d, hidden, seed=1)
    with torch.no_grad():
        agent.actor.b1.normal_()  # biases are zero at init: make them count
    quantize_heads_(agent)
    h = torch.tanh(torch.randn(1, symbols, d, generator=torch.Generator().manual_seed(2)))
    for mlp in (agent.actor, agent.critic):
        fast = Int8Heads.of(mlp)
        assert fast is not None
        with torch.inference_mode():
            torch.testing.assert_close(fast(h), mlp(h), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"input \(2, "):
        fast(h.expand(2, -1, -1))


def test_float32_heads_and_fine_tuned_ones_take_the_torch_path():
    agent = heads(4, 8, 6)
    assert Int8Heads.of(agent.actor) is None  # not on the grid
    quantize_heads_(agent)
    with torch.no_grad():
        agent.actor.w1[0, 0, 0] += 1e-3  # one weight moved off the grid (fine-tuned after rounding)
    assert Int8Heads.of(agent.actor) is None
    assert (Int8Heads.of(agent.critic) is not None) == (load() is not None)


@pytest.mark.parametrize(
    ("d", "heads", "window", "scales"),
    [(32, 4, 24, [1, 2, 4]), (16, 4, 9, [1, 3]), (64, 4, 12, [1]), (24, 3, 10, [1, 2])],
    ids=["seed", "narrow", "wide", "other-width"],  # the last runs the kernel with run-time sizes
)
def test_the_scale_completion_kernel_is_the_torch_path_and_the_branch(d, heads, window, scales):
    torch.manual_seed(0)
    branch = TransformerBranch(5, window, d, heads, scales, dropout=0.0).eval()
    with torch.no_grad():  # non-trivial layer norms and biases
        for name, p in branch.named_parameters():
            if "norm" in name or "bias" in name:
                p.normal_(0.5 if name.endswith("weight") else 0.0, 0.3)
    x = torch.randn(2, 7, window, 5)
    with torch.inference_mode():
        states = inference.transformer_prefix(branch, x[:, :, :-1])
        newest = inference.newest_tokens(branch, x)
        for i, state in enumerate(states):
            layer = branch.layers[i]
            lib = inference._native(layer, state)
            if lib is None and cbuild.compiler() is None:
                pytest.skip("no C compiler and no prebuilt kernels here")
            assert lib is not None, (
                "a compiler exists but the attention kernel did not build (see the warning)"
            )
            fast = inference._complete_native(lib, layer, state, newest, branch.scales[i])
            z_new = (state.partial + newest) / branch.scales[i] if state.partial is not None else newest
            slow = inference._complete_torch(layer, state, inference._in_proj(layer, z_new), z_new)
            for f, s_ in zip(fast, slow, strict=True):
                torch.testing.assert_close(f, s_, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            inference.transformer_complete(branch, states, x), branch(x), rtol=1e-5, atol=1e-5
        )


def test_without_a_compiler_the_kernels_run_in_torch(tmp_path):
    """int8 heads and the transformer completion both fall back to torch (same functions), and nothing is
    built."""
    code = (
        "import torch\n"
        "from hmarl.agents.int8_heads import Int8Heads, quantize_heads_\n"
        "from hmarl.agents.symbol import BatchedMLP\n"
        "from hmarl.encoders import inference\n"
        "from hmarl.encoders.branches import TransformerBranch\n"
        "m = BatchedMLP(3, 4, 5, 7, 0.1, torch.Generator().manual_seed(0))\n"
        "holder = torch.nn.Module(); holder.actor = m; holder.critic = m\n"
        "quantize_heads_(holder); print(Int8Heads.of(m))\n"
        "b = TransformerBranch(5, 6, 8, 2, [1, 2], 0.0).eval(); x = torch.randn(1, 3, 6, 5)\n"
        "with torch.inference_mode():\n"
        "    s = inference.transformer_prefix(b, x[:, :, :-1])\n"
        "    print(inference._native(b.layers[0], s[0]))\n"
        "    print(bool(torch.allclose(inference.transformer_complete(b, s, x), b(x), atol=1e-5)))\n"
    )
    assert run_without_compiler(code, tmp_path).split() == ["None", "None", "True"]
