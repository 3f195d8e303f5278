"""The sl_cache step on a small planted_alpha market: layout, honesty of every cached bar, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hmarl.data.splits import folds_for
from hmarl.data.store import FeatureStore
from hmarl.sl.cache import CHANNELS, NONE, OUTER, SLCache, honesty_violations
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.inputs import model_inputs
from hmarl.sl.models import MODEL_NAMES, load_checkpoint
from hmarl.sl.train import bar_logits, build_sl_cache
from sl_fixtures import one_thread, shared_sl_cache, shared_store, small_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    store_path = shared_store(tmp_path_factory, "planted_alpha")
    cache_path = shared_sl_cache(tmp_path_factory, "planted_alpha")
    return small_config("planted_alpha"), FeatureStore.load(store_path), cache_path


def test_layout_manifest_and_probabilities(planted):
    cfg, store, path = planted
    cache = SLCache.load(path)
    t, s = store.num_bars, store.num_symbols
    assert cache.probs.shape == (t, s, 9) and cache.probs.dtype == np.float32
    assert cache.source_fold.shape == (t,) and cache.source_split.shape == (t,)
    covered = cache.source_fold != NONE
    assert np.isfinite(cache.probs[covered]).all() and np.isnan(cache.probs[~covered]).all()
    folds = folds_for(cfg, t)
    assert np.array_equal(np.flatnonzero(covered), np.arange(folds[0].train[0], t))  # first fold's train on
    for name in MODEL_NAMES:
        assert np.allclose(cache.model_probs(name)[covered].sum(-1), 1.0, atol=1e-5)
    m = cache.manifest
    assert m["channels"] == list(CHANNELS) and m["fingerprint"] == store.meta["fingerprint"]
    assert m["feature_names"] == store.feature_names and [f["index"] for f in m["folds"]] == [0, 1]
    assert {n: v["version"] for n, v in m["models"].items()} == {
        "mlp": "mlp-1",
        "lstm": "lstm-1",
        "gru": "gru-1",
    }
    # 3 inner + 2 fold models, each with every classifier, each checkpoint on disk
    assert len(m["fits"]) == cfg.sl.inner_folds + cfg.splits.n_folds
    for fit in m["fits"]:
        for info in fit["models"].values():
            assert (path / info["checkpoint"]).is_file()
    assert {p.name for p in (path / "checkpoints").iterdir()} == set(MODEL_NAMES)


def test_no_cached_bar_comes_from_a_model_that_saw_it(planted):
    """Provenance: each bar names its model; that model's recorded train bars (as saved in its own
    checkpoint at training time) are all more than label_horizon + embargo away from the bar."""
    cfg, store, path = planted
    cache = SLCache.load(path)
    gap = cfg.features.label_horizon + cfg.splits.embargo_bars
    assert cache.manifest["purge_gap"] == gap
    fit_ranges = {}
    for fit in cache.manifest["fits"]:
        recorded = [
            torch.load(path / info["checkpoint"], weights_only=True)["fit_ranges"]
            for info in fit["models"].values()
        ]
        assert all(r == recorded[0] for r in recorded)
        fit_ranges[(fit["fold"], fit["split"])] = recorded[0]
    assert fit_ranges == cache.fit_ranges()  # the manifest records the same train bars
    assert honesty_violations(cache.source_fold, cache.source_split, fit_ranges, gap) == []
    # and the walk-forward rule: test bars of fold k come from fold k's own model, never a later fold's
    for fold in folds_for(cfg, store.num_bars):
        test = fold.bars("test")
        assert (cache.source_fold[test] == fold.index).all() and (cache.source_split[test] == OUTER).all()
        trained_after = [k for (k, _), r in fit_ranges.items() if r and r[-1][1] > fold.test[0]]
        assert not set(cache.source_fold[test].tolist()) & set(trained_after)


def test_checkpoints_reproduce_the_cache(planted):
    cfg, store, path = planted
    cache = SLCache.load(path)
    window = cfg.features.window
    for fit in (cache.manifest["fits"][0], cache.manifest["fits"][-1]):  # one inner model, one fold model
        bars = np.arange(*fit["predicts"][0])[:40]
        x = model_inputs(store, fit["fold"])
        for m, name in enumerate(MODEL_NAMES):
            model, meta = load_checkpoint(path / fit["models"][name]["checkpoint"], store.feature_names)
            assert meta["fold"] == fit["fold"] and meta["split"] == fit["split"]
            probs = calibrated_probs(bar_logits(model, x, bars, window, 4096), meta["temperature"]).numpy()
            np.testing.assert_allclose(probs, cache.probs[bars][..., 3 * m : 3 * m + 3], atol=1e-5)


def test_same_params_and_seed_give_the_same_cache(planted, tmp_path):
    _, store, _ = planted
    cfg = small_config("planted_alpha", "sl.max_epochs=1", "sl.inner_folds=2")
    a, _ = build_sl_cache(store, cfg, tmp_path / "a")
    b, _ = build_sl_cache(store, cfg, tmp_path / "b")
    assert np.array_equal(a.probs, b.probs, equal_nan=True)
    assert np.array_equal(a.source_fold, b.source_fold) and np.array_equal(a.source_split, b.source_split)
    c, _ = build_sl_cache(
        store, small_config("planted_alpha", "sl.max_epochs=1", "sl.inner_folds=2", "seed=5"), tmp_path / "c"
    )
    assert not np.array_equal(a.probs, c.probs, equal_nan=True)  # the seed matters


def test_metrics_file_scores_every_model_and_fold(planted):
    import json

    _, _, path = planted
    metrics = json.loads(Path(path, "metrics.json").read_text())
    for name in MODEL_NAMES:
        assert set(metrics[name]) == {"fold_0", "fold_1", "oof", "test"}
        for key in (
            "accuracy",
            "log_loss",
            "brier",
            "auc",
            "base_accuracy",
            "base_log_loss",
            "base_brier",
            "base_auc",
        ):
            assert np.isfinite(metrics[name]["test"][key])
        assert metrics[name]["fold_1"]["test"]["n"] > 0
