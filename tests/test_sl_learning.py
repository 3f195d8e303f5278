"""The SL priors learn what there is to learn, and nothing else.

Scored on the cache's honest bars only (first-fold out-of-fold bars + every fold's test bars), against the
base rate (train class frequencies). Samples of one bar share market moves and neighbouring bars share
volatility regimes, so standard errors treat blocks of BLOCK consecutive bars as the independent units
(clustered SE for the log-loss gain, block bootstrap for AUCs). Tolerances:

- planted_alpha (ic 0.4): every model's log-loss gain over the base rate exceeds 3 SE, its macro AUC
  exceeds 0.5 by 3 SE and its up-vs-down AUC exceeds 0.55;
- random_walk: no model's log-loss gain reaches 2 SE (a skill-less model fails this ~2% of the time), its
  up-vs-down AUC stays below 0.5 + 3 SE and its macro AUC below 0.5 + 4 SE (how far a bar moves stays a
  little predictable from volatility changes even in a random walk; its direction does not).
"""

from __future__ import annotations

import numpy as np
import pytest

from hmarl.data.splits import folds_for
from hmarl.data.store import FeatureStore
from hmarl.sl.cache import SLCache
from hmarl.sl.labels import store_labels
from hmarl.sl.metrics import bootstrap_se, classification_metrics, direction_auc, log_loss_gain, macro_auc
from hmarl.sl.models import MODEL_NAMES
from sl_fixtures import one_thread, shared_sl_cache, shared_store, small_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCK = 10  # bars per independent unit of the standard errors


def honest_scores(tmp_path_factory, mode: str) -> dict[str, dict[str, float]]:
    cfg = small_config(mode)
    store = FeatureStore.load(shared_store(tmp_path_factory, mode))
    cache = SLCache.load(shared_sl_cache(tmp_path_factory, mode))
    labels = store_labels(store, cfg.features.label_horizon, cfg.sl)
    blocks = cache.manifest["inner_blocks"]
    bars = np.concatenate(
        [np.arange(blocks[0][0], blocks[-1][1])] + [f.bars("test") for f in folds_for(cfg, store.num_bars)]
    )
    y = labels[bars]
    ok = y >= 0
    clusters = np.broadcast_to(bars[:, None], y.shape)[ok] // BLOCK
    y = y[ok]
    prior = np.bincount(y, minlength=3) / len(y)
    out = {}
    for name in MODEL_NAMES:
        p = cache.model_probs(name)[bars][ok].astype(np.float64)
        gain, se = log_loss_gain(p, y, prior, clusters)
        m = classification_metrics(p, y, prior)
        out[name] = {
            "gain": gain,
            "gain_se": se,
            "auc": m["auc"],
            "auc_se": bootstrap_se(macro_auc, p, y, clusters),
            "dir_auc": m["auc_direction"],
            "dir_se": bootstrap_se(direction_auc, p, y, clusters),
            "log_loss": m["log_loss"],
            "base_log_loss": m["base_log_loss"],
        }
    return out


def test_planted_alpha_beats_the_base_rate(tmp_path_factory):
    scores = honest_scores(tmp_path_factory, "planted_alpha")
    for name, s in scores.items():
        assert s["log_loss"] < s["base_log_loss"], (name, s)
        assert s["gain"] > 3 * s["gain_se"], (name, s)
        assert s["auc"] > 0.5 + 3 * s["auc_se"], (name, s)
        assert s["dir_auc"] > 0.55, (name, s)


def test_random_walk_does_not_beat_the_base_rate(tmp_path_factory):
    scores = honest_scores(tmp_path_factory, "random_walk")
    for name, s in scores.items():
        assert s["gain"] < 2 * s["gain_se"], (name, s)
        assert s["dir_auc"] < 0.5 + 3 * s["dir_se"], (name, s)
        assert s["auc"] < 0.5 + 4 * s["auc_se"], (name, s)
