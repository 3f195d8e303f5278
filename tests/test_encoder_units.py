"""Encoder parts: branch shapes, batching over (bar, symbol) without leaks across symbols, branch switches,
SL priors, the correlation graph, masking baselines, checkpoints, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmarl.config import ConfigError, SplitsConfig, build_config
from hmarl.data.splits import make_folds
from hmarl.encoders.branches import (
    BiLSTMBranch,
    CNNBranch,
    GraphBranch,
    TransformerBranch,
    correlation_adjacency,
)
from hmarl.encoders.model import PretrainHeads, SharedEncoder, load_encoder, save_encoder
from hmarl.encoders.params import EncoderConfig
from hmarl.encoders.pretrain import PretrainData, forward_returns, last_unmasked, pretrain, random_mask
from hmarl.encoders.probes import probe_metrics
from hmarl.encoders.train import embedding_plan, pretrain_bars
from hmarl.errors import DataError
from sl_fixtures import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
B, S, W, F = 3, 5, 8, 4
SMALL = {
    "d_model": 8,
    "heads": 2,
    "lstm_hidden": 4,
    "cnn_channels": 4,
    "embed_dim": 32,
    "graph_top_k": 2,
    "dropout": 0.0,
}


def _chain_adjacency(s: int = S) -> torch.Tensor:
    adj = torch.zeros(s, s)
    adj[0, 1] = 1.0  # only symbol 0 listens, to symbol 1
    return adj


def _branches():
    return {
        "transformer": TransformerBranch(F, W, 8, 2, [1, 2, 4], 0.0),
        "lstm": BiLSTMBranch(F, 4, 8),
        "cnn": CNNBranch(F, 4, 3, 8),
        "graph": GraphBranch(F, 8, 2, _chain_adjacency()),
    }


@pytest.mark.parametrize("name", ["transformer", "lstm", "cnn", "graph"])
def test_branch_shapes_and_symbol_isolation(name):
    torch.manual_seed(0)
    branch = _branches()[name].eval()
    x = torch.randn(B, S, W, F)
    out = branch(x)
    assert out.shape == (B, S, 8)
    y = x.clone()
    y[:, 1] += 1.0  # change symbol 1 only
    changed = (branch(y) - out).abs().amax(dim=(0, 2)) > 1e-6
    # sequence branches: only symbol 1 moves; graph: symbol 1 and its listener 0
    expected = [False, True, False, False, False] if name != "graph" else [True, True, False, False, False]
    assert changed.tolist() == expected


def test_batched_encoder_equals_bar_by_bar():
    torch.manual_seed(0)
    enc = SharedEncoder(EncoderConfig(**SMALL), W, F, _chain_adjacency()).eval()
    x = torch.randn(B, S, W, F)
    priors = torch.softmax(torch.randn(B, S, 9), -1)
    together = enc(x, priors)
    alone = torch.cat([enc(x[i : i + 1], priors[i : i + 1]) for i in range(B)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_priors_are_appended_and_missing_ones_are_uniform():
    enc = SharedEncoder(EncoderConfig(**SMALL), W, F, _chain_adjacency()).eval()
    x = torch.randn(B, S, W, F)
    priors = torch.softmax(torch.randn(B, S, 9), -1)
    priors[0, 0] = float("nan")
    z = enc(x, priors)
    assert z.shape == (B, S, 32) and enc.learned_dim == 23
    assert torch.equal(z[1:, :, 23:], priors[1:]) and torch.allclose(z[0, 0, 23:], torch.full((9,), 1 / 3))
    no_priors = SharedEncoder(EncoderConfig(**SMALL, append_sl_priors=False), W, F, _chain_adjacency())
    assert no_priors(x).shape == (B, S, 32) and no_priors.learned_dim == 32


@pytest.mark.parametrize("only", ["transformer", "lstm", "cnn", "graph"])
def test_each_branch_can_run_alone(only):
    cfg = EncoderConfig(**SMALL, branches={k: k == only for k in ("transformer", "lstm", "cnn", "graph")})
    enc = SharedEncoder(cfg, W, F, _chain_adjacency())
    assert list(enc.branches) == [only]
    assert enc(torch.randn(B, S, W, F)).shape == (B, S, 32)


def test_branch_switches_are_validated():
    off = "encoder.branches.{}=false"
    with pytest.raises(ConfigError, match="at least one branch must be enabled"):
        build_config({}, [off.format(b) for b in ("transformer", "lstm", "cnn", "graph")])
    with pytest.raises(ConfigError, match=r"encoder.d_model \(10\) must be divisible by encoder.heads \(4\)"):
        build_config({}, ["encoder.d_model=10"])
    with pytest.raises(ConfigError, match="encoder.branches.gnn: unknown key"):
        build_config({}, ["encoder.branches.gnn=false"])


def test_correlation_graph_links_co_moving_symbols():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 500))
    returns = np.stack(
        [
            a,
            a + 0.1 * rng.standard_normal(500),
            b,
            b + 0.1 * rng.standard_normal(500),
            rng.standard_normal(500),
        ],
        axis=1,
    )
    returns[3, 2] = np.nan
    adj = correlation_adjacency(returns, top_k=1).numpy()
    assert adj[0, 1] == 1.0 and adj[1, 0] == 1.0 and adj[2, 3] == 1.0 and adj[3, 2] == 1.0
    assert np.allclose(adj.sum(1)[:4], 1.0) and (np.count_nonzero(adj, axis=1) <= 1).all()
    assert np.all(np.diag(adj) == 0)


def test_last_unmasked_and_mask_rates():
    x = torch.arange(1.0, 7.0).reshape(1, 1, 6, 1)
    mask = torch.tensor([True, False, True, True, False, True]).reshape(1, 1, 6, 1)
    assert last_unmasked(x, mask).flatten().tolist() == [0.0, 2.0, 2.0, 2.0, 5.0, 5.0]
    m = random_mask(torch.Size((64, 8, 24, 23)), 0.2, 0.1, torch.Generator().manual_seed(0))
    assert m.float().mean().item() == pytest.approx(1 - 0.8 * 0.9, abs=0.01)
    assert m.all(dim=-1).float().mean().item() == pytest.approx(0.2, abs=0.02)  # whole steps


def test_forecast_targets_and_pretraining_bars_stay_in_range():
    r1 = np.arange(10.0)[:, None]
    fwd = forward_returns(r1, 3)
    assert fwd[2, 0].tolist() == [3.0, 4.0, 5.0] and np.isnan(fwd[8, 0, 1:]).all()
    folds = make_folds(1500, SplitsConfig(), label_horizon=1, first_bar=60)
    bars = pretrain_bars(folds[0], "train", 24, horizon=1, forecast_k=5)
    # the last target (bar t + 5) is the last bar a train label reaches (train end - 1 + horizon)
    assert bars[0] == folds[0].train[0] and bars[-1] + 5 == folds[0].train[1] - 1 + 1
    plan = embedding_plan(folds, 24)
    assert plan[0][1:] == (23, folds[0].test[1]) and [p[1:] for p in plan[1:]] == [f.test for f in folds[1:]]


def _tiny_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(120, S, F, generator=gen)
    r1 = torch.randn(120, S, generator=gen).numpy() * 0.01
    return PretrainData.build(x, r1, np.full((120, S), 0.01), 2, np.arange(W, 80))


def test_pretraining_is_deterministic_and_checkpoints_round_trip(tmp_path):
    cfg = EncoderConfig(**SMALL, epochs=2, batch_bars=8, forecast_k=2)
    data = _tiny_data()
    runs = [
        pretrain(cfg, data, _chain_adjacency(), np.arange(W, 80), np.arange(90, 110), W, seed=3)
        for _ in range(2)
    ]
    for k, v in runs[0][0].state_dict().items():
        assert torch.equal(v, runs[1][0].state_dict()[k]), k
    enc, heads, info = runs[0]
    assert info["best"]["epoch"] in (1, 2) and "recon_last" in info["best"]
    names, symbols = [f"f{i}" for i in range(F)], [f"S{i}" for i in range(S)]
    path = tmp_path / "fold_0.pt"
    save_encoder(
        path,
        enc,
        heads,
        hparams=cfg.model_dump(),
        window=W,
        feature_names=names,
        symbols=symbols,
        fold=0,
        fit_ranges=[[W, 80]],
        fingerprint="fp",
        vol_window=20,
    )
    loaded, loaded_heads, meta = load_encoder(path, names, symbols)
    x = torch.randn(2, S, W, F)
    torch.testing.assert_close(loaded(x), enc(x))
    torch.testing.assert_close(loaded_heads(loaded.learned(x))[1], heads(enc.learned(x))[1])
    assert meta["fit_ranges"] == [[W, 80]] and isinstance(heads, PretrainHeads)
    with pytest.raises(DataError, match=r"feature order differs at position 0"):
        load_encoder(path, names[::-1], symbols)
    with pytest.raises(DataError, match="another symbol universe"):
        load_encoder(path, names, symbols[:-1])


def test_linear_probe_finds_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)

    def sets(signal: bool):
        out = []
        for n in (3000, 1000, 1000):
            x = rng.standard_normal((n, 40))
            score = 1.5 * x[:, 0] if signal else 0.0
            y = np.digitize(score + rng.standard_normal(n), [-0.5, 0.5])
            out.append((torch.from_numpy(x), y))
        return out

    found = probe_metrics(*sets(True), l2_grid=[1e-3, 1e-1, 10.0])
    assert found["auc"] > 0.75 and found["log_loss"] < found["base_log_loss"] - 0.1
    noise = probe_metrics(*sets(False), l2_grid=[1e-3, 1e-1, 10.0])
    assert (
        noise["log_loss"] > noise["base_log_loss"] - 0.01 and noise["l2"] >= 1e-1
    )  # shrinks to the base rate
