"""The pretrain_encoder step on a small planted_alpha market: embedding cache, checkpoints, honesty,
baselines, the linear probe recovering the planted signal, and the attribution plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hmarl.data.splits import folds_for
from hmarl.data.store import FeatureStore
from hmarl.encoders.branches import correlation_adjacency
from hmarl.encoders.model import load_encoder
from hmarl.encoders.pretrain import embed, one_bar_returns
from hmarl.sl.cache import SLCache
from hmarl.sl.inputs import model_inputs
from hmarl.steps.runner import execute
from sl_fixtures import one_thread, shared_sl_cache, shared_store, small_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = small_config("planted_alpha")
    store = shared_store(tmp_path_factory, "planted_alpha")
    cache = shared_sl_cache(tmp_path_factory, "planted_alpha")
    out = tmp_path_factory.mktemp("encoder") / "encoder"
    metrics = execute(
        "pretrain_encoder", cfg, {"store": str(store), "sl_cache": str(cache)}, {"encoder": str(out)}
    )
    return cfg, FeatureStore.load(store), SLCache.load(cache), out, metrics


def test_embedding_cache_layout_and_priors(run):
    cfg, store, cache, out, _ = run
    emb = np.load(out / "embeddings.npy", mmap_mode="r")
    src = np.load(out / "source_fold.npy")
    t, s, d = store.num_bars, store.num_symbols, cfg.encoder.embed_dim
    assert emb.shape == (t, s, d) and emb.dtype == np.float16
    window = cfg.features.window
    assert (src[: window - 1] == -1).all() and np.isnan(emb[: window - 1]).all()
    assert (src[window - 1 :] >= 0).all() and np.isfinite(emb[window - 1 :]).all()
    priors = emb[window - 1 :, :, d - 9 :].astype(np.float32)
    probs = np.asarray(cache.probs[window - 1 :])
    has = np.isfinite(probs)
    np.testing.assert_allclose(priors[has], probs[has], atol=1e-3)  # float16
    np.testing.assert_allclose(priors[~has], 1 / 3, atol=1e-3)  # no SL prediction: uniform
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == store.meta["fingerprint"] and manifest["embed_dim"] == d
    assert (
        manifest["priors"]["dims"] == [d - 9, d]
        and manifest["sl_cache"]["fingerprint"] == store.meta["fingerprint"]
    )


def test_each_fold_encoder_saw_only_its_train_bars(run):
    cfg, store, _, out, _ = run
    src = np.load(out / "source_fold.npy")
    r1 = one_bar_returns(np.asarray(store.price("close")), np.asarray(store.tradable))
    horizon = cfg.features.label_horizon
    for fold in folds_for(cfg, store.num_bars):
        ckpt = torch.load(out / "checkpoints" / "encoder" / f"fold_{fold.index}.pt", weights_only=True)
        last_fit = ckpt["fit_ranges"][-1][1] - 1
        assert ckpt["fit_ranges"][0][0] >= fold.train[0]
        assert last_fit + cfg.encoder.forecast_k <= fold.train[1] - 1 + horizon  # targets stay in train reach
        assert (src[fold.test[0] : fold.test[1]] == fold.index).all()
        adjacency = ckpt["encoder"]["branches.graph.adjacency"]
        expected = correlation_adjacency(r1[fold.train[0] : fold.train[1]], cfg.encoder.graph_top_k)
        assert torch.equal(adjacency, expected)  # the graph comes from train bars only
        assert not torch.equal(adjacency, correlation_adjacency(r1, cfg.encoder.graph_top_k))


def test_checkpoint_reproduces_the_cached_embeddings(run):
    cfg, store, cache, out, _ = run
    fold = folds_for(cfg, store.num_bars)[-1]
    encoder, _, meta = load_encoder(
        out / "checkpoints" / "encoder" / f"fold_{fold.index}.pt", store.feature_names, store.symbols
    )
    assert meta["fold"] == fold.index
    bars = fold.bars("test")[:20]
    z = embed(
        encoder,
        model_inputs(store, fold.index),
        bars,
        cfg.features.window,
        8,
        torch.from_numpy(np.array(cache.probs)),
    )
    cached = np.load(out / "embeddings.npy", mmap_mode="r")[bars].astype(np.float32)
    np.testing.assert_allclose(z.numpy(), cached, atol=2e-2, rtol=1e-2)  # float16 storage


def test_pretraining_beats_naive_reconstruction(run):
    *_, metrics = run
    assert (
        metrics["val_recon"] < metrics["val_recon_last"] and metrics["val_recon"] < metrics["val_recon_mean"]
    )
    assert metrics["val_recon_vs_naive"] < 1.0
    assert np.isfinite(metrics["val_forecast_vs_naive"]) and np.isfinite(metrics["val_forecast1_vs_naive"])


def test_linear_probe_recovers_the_planted_signal(run):
    """On each fold's test bars the probe on the learned embedding (SL priors excluded) beats the base rate."""
    _, _, _, out, _ = run
    metrics = json.loads((out / "metrics.json").read_text())
    for fold in ("fold_0", "fold_1"):
        m = metrics[fold]
        assert m["probe_embedding_n"] > 500
        assert m["probe_embedding_log_loss"] < m["probe_embedding_base_log_loss"] - 0.01, m
        assert m["probe_embedding_auc"] > 0.56 and m["probe_embedding_auc_direction"] > 0.6, m
    assert {"probe_raw_auc", "probe_embedding_priors_auc"} <= set(metrics["mean"])


def test_attribution_points_at_the_volume_surprise(run):
    _, store, _, out, _ = run
    assert (out / "attribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    att = json.loads((out / "attribution.json").read_text())
    matrix = np.array(att["matrix"])
    assert matrix.shape == (small_config().features.window, len(store.feature_names))
    lag_pos, feature = np.unravel_index(matrix.argmax(), matrix.shape)
    assert lag_pos == matrix.shape[0] - 1  # the bar itself (lag 0) ...
    assert store.feature_names[feature] in ("volume_z", "dollar_volume_z")  # ... and its volume surprise
    assert max(att["per_lag"], key=att["per_lag"].get) == "0"


def test_refit_every_reuses_an_earlier_folds_encoder_honestly(tmp_path_factory):
    """``encoder.refit_every=2`` over 2 folds: one pretraining (fold 0); fold 1's test bars are embedded by
    that encoder, and fold 1's manifest entry names its checkpoint and the train/validation bars it learned
    from, which all precede fold 1's test bars (what the walk-forward's leakage check reads)."""
    cfg = small_config("planted_alpha", "encoder.refit_every=2", "encoder.branches.transformer=false")
    store_dir = shared_store(tmp_path_factory, "planted_alpha")
    cache = shared_sl_cache(tmp_path_factory, "planted_alpha")
    out = tmp_path_factory.mktemp("encoder_refit") / "encoder"
    execute("pretrain_encoder", cfg, {"store": str(store_dir), "sl_cache": str(cache)}, {"encoder": str(out)})
    store = FeatureStore.load(store_dir)
    folds = folds_for(cfg, store.num_bars)
    assert len(folds) == 2
    assert sorted(p.name for p in (out / "checkpoints" / "encoder").iterdir()) == ["fold_0.pt"]
    fits = json.loads((out / "manifest.json").read_text())["fits"]
    assert [(f["fold"], f["trained_on_fold"], f["checkpoint"]) for f in fits] == [
        (0, 0, "checkpoints/encoder/fold_0.pt"),
        (1, 0, "checkpoints/encoder/fold_0.pt"),
    ]
    assert (
        fits[1]["fit_ranges"] == fits[0]["fit_ranges"] and fits[1]["select_range"] == fits[0]["select_range"]
    )
    val = folds[0].val  # model selection on fold 0's validation bars (purged of the forecast horizon)
    assert val[0] <= fits[1]["select_range"][0] < fits[1]["select_range"][1] <= val[1]
    assert max(r[1] for r in fits[1]["fit_ranges"]) <= folds[0].train[1] < folds[1].test[0]
    src = np.load(out / "source_fold.npy")
    assert (src[folds[1].test[0] : folds[1].test[1]] == 1).all()
    encoder, _, meta = load_encoder(out / fits[1]["checkpoint"], store.feature_names, store.symbols)
    assert meta["fold"] == 0
    bars = folds[1].bars("test")[:10]
    z = embed(
        encoder,
        model_inputs(store, 1),
        bars,
        cfg.features.window,
        8,
        torch.from_numpy(np.array(SLCache.load(cache).probs)),
    )
    cached = np.load(out / "embeddings.npy", mmap_mode="r")[bars].astype(np.float32)
    np.testing.assert_allclose(z.numpy(), cached, atol=2e-2, rtol=1e-2)  # fold 1's inputs, fold 0's weights
