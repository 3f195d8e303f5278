"""Walk-forward folds: no test/validation bar or its label horizon comes near any train bar."""

from __future__ import annotations

import numpy as np
import pytest

from hmarl.config import ConfigError, SplitsConfig, build_config
from hmarl.data.splits import folds_for, make_folds


def random_setup(rng: np.random.Generator) -> tuple[SplitsConfig, int, int, int]:
    """A random valid splits config with a label horizon, a warm-up and the fewest bars it needs (or more)."""
    splits = SplitsConfig(
        n_folds=int(rng.integers(1, 6)),
        train_bars=int(rng.integers(10, 120)),
        val_bars=int(rng.integers(1, 40)),
        test_bars=int(rng.integers(1, 50)),
        embargo_bars=int(rng.integers(0, 12)),
        expanding=bool(rng.integers(0, 2)),
    )
    horizon, first_bar = int(rng.integers(1, 6)), int(rng.integers(0, 80))
    gap = horizon + splits.embargo_bars
    need = first_bar + splits.train_bars + 2 * gap + splits.val_bars + splits.n_folds * splits.test_bars
    return splits, horizon, first_bar, need + int(rng.integers(0, 3)) * int(rng.integers(0, 60))


def min_separation(later: np.ndarray, earlier: np.ndarray, horizon: int) -> int:
    """Smallest number of bars between any label span [j, j+h] of ``later`` and [i, i+h] of ``earlier``.

    Brute force over all pairs, in both directions, so the check does not rely on the fold layout.
    """
    a = later[:, None]
    b = earlier[None, :]
    forward = a - (b + horizon)  # later span starts after the earlier span ends
    backward = b - (a + horizon)  # or ends before it starts
    return int(np.maximum(forward, backward).min())


@pytest.mark.parametrize("seed", range(40))
def test_test_and_val_bars_are_purged_and_embargoed_from_train(seed):
    splits, horizon, first_bar, n_bars = random_setup(np.random.default_rng(seed))
    folds = make_folds(n_bars, splits, horizon, first_bar)
    assert len(folds) == splits.n_folds
    for fold in folds:
        train, val, test = fold.bars("train"), fold.bars("val"), fold.bars("test")
        assert len(val) == splits.val_bars and len(test) == splits.test_bars
        assert train.min() >= first_bar and test.max() < n_bars
        # more than embargo_bars between any two label spans: no shared bar, no serial-correlation leak
        assert min_separation(test, train, horizon) > splits.embargo_bars
        assert min_separation(val, train, horizon) > splits.embargo_bars
        assert min_separation(test, val, horizon) > splits.embargo_bars
        if splits.expanding:
            assert fold.train[0] == first_bar and len(train) >= splits.train_bars
        else:
            assert len(train) == splits.train_bars


@pytest.mark.parametrize("seed", range(40, 60))
def test_folds_walk_forward_with_disjoint_test_windows(seed):
    splits, horizon, first_bar, n_bars = random_setup(np.random.default_rng(seed))
    folds = make_folds(n_bars, splits, horizon, first_bar)
    assert folds[-1].test[1] == n_bars
    for prev, fold in zip(folds, folds[1:], strict=False):
        assert fold.test[0] == prev.test[1]  # consecutive, no overlap, no hole
        assert fold.train[1] > prev.train[1] and fold.train[0] >= prev.train[0]
    covered = np.concatenate([f.bars("test") for f in folds])
    assert len(np.unique(covered)) == len(covered) == splits.n_folds * splits.test_bars


@pytest.mark.parametrize("seed", range(60, 70))
def test_too_short_data_names_the_splits_keys(seed):
    splits, horizon, first_bar, _ = random_setup(np.random.default_rng(seed))
    gap = horizon + splits.embargo_bars
    need = first_bar + splits.train_bars + 2 * gap + splits.val_bars + splits.n_folds * splits.test_bars
    make_folds(need, splits, horizon, first_bar)  # exactly enough
    with pytest.raises(ConfigError) as err:
        make_folds(need - 1, splits, horizon, first_bar)
    message = str(err.value)
    for key in ("splits", "n_folds", "train_bars", "val_bars", "test_bars", "embargo_bars", "warmup_bars"):
        assert key in message
    assert f"need {need} bars" in message and f"has {need - 1}" in message


def test_folds_for_uses_the_feature_warmup_and_label_horizon():
    cfg = build_config({"features": {"warmup_bars": 30, "label_horizon": 3}, "splits": {"embargo_bars": 4}})
    folds = folds_for(cfg, 2000)
    assert folds[0].train[0] == 30
    assert all(f.val[0] - f.train[1] == 7 and f.test[0] - f.val[1] == 7 for f in folds)
