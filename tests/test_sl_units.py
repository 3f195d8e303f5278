"""SL building blocks: labels, window gathers, metrics, calibration, cross-fitting plan, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmarl.config import SplitsConfig
from hmarl.data.splits import make_folds
from hmarl.data.windows import gather_pair_windows, gather_windows
from hmarl.errors import DataError
from hmarl.runtime import torch_threads
from hmarl.sl.cache import OUTER, honesty_violations, inner_blocks, inner_fit_ranges, walk_forward_plan
from hmarl.sl.calibration import fit_temperature
from hmarl.sl.inputs import bars_to_ranges, ranges_to_bars
from hmarl.sl.labels import INVALID, direction_labels, forward_log_returns, trailing_volatility
from hmarl.sl.metrics import binary_auc, classification_metrics, log_loss_gain, macro_auc
from hmarl.sl.models import MODEL_NAMES, build_model, load_checkpoint, save_checkpoint
from hmarl.sl.params import SLModelParams


# --------------------------------------------------------------------------- labels
def test_forward_returns_skip_untradable_and_tail():
    close = np.array([[100.0], [110.0], [99.0], [99.0], [120.0]])
    tradable = np.array([[True], [True], [True], [False], [True]])
    r = forward_log_returns(close, tradable, horizon=1)[:, 0]
    assert r[0] == pytest.approx(np.log(1.1)) and r[1] == pytest.approx(np.log(0.9))
    assert np.isnan(r[2]) and np.isnan(r[3])  # t+1 or t not tradable
    assert np.isnan(r[4])  # past the end
    r2 = forward_log_returns(close, np.ones_like(tradable), horizon=2)[:, 0]
    assert r2[0] == pytest.approx(np.log(0.99)) and np.isnan(r2[3:]).all()


def test_direction_labels_thresholds_are_strict():
    r = np.array([-0.5, -0.3, -0.1, 0.0, 0.3, 0.31, np.nan])
    assert direction_labels(r, -0.3, 0.3).tolist() == [0, 1, 1, 1, 1, 2, INVALID]


def test_trailing_volatility_is_causal_population_std():
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (80, 3)), axis=0))
    vol = trailing_volatility(close, np.ones_like(close, dtype=bool), 20)
    r = np.diff(np.log(close), axis=0)
    assert vol[50] == pytest.approx(r[30:50].std(axis=0))  # returns of bars 31..50 -> known at bar 50
    changed = close.copy()
    changed[51:] *= 1.5
    assert np.array_equal(
        trailing_volatility(changed, np.ones_like(close, dtype=bool), 20)[:51], vol[:51], equal_nan=True
    )


# --------------------------------------------------------------------------- windows
def test_window_gathers_match_a_loop():
    feats = torch.arange(30 * 4 * 3, dtype=torch.float32).reshape(30, 4, 3)
    bars = torch.tensor([5, 29, 7])
    got = gather_windows(feats, bars, 6)
    assert got.shape == (3, 4, 6, 3)
    for i, b in enumerate(bars.tolist()):
        for s in range(4):
            assert torch.equal(got[i, s], feats[b - 5 : b + 1, s])
    pairs = gather_pair_windows(feats, bars, torch.tensor([3, 0, 2]), 6)
    assert torch.equal(pairs, got[torch.arange(3), torch.tensor([3, 0, 2])])
    with pytest.raises(IndexError, match=r"bars must lie in \[5, 29\] for window=6, got min 4"):
        gather_pair_windows(feats, torch.tensor([4, 9]), torch.tensor([0, 0]), 6)


# --------------------------------------------------------------------------- metrics
def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 200).astype(float)
    pos = rng.random(200) < 0.4
    diff = scores[pos][:, None] - scores[~pos][None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert binary_auc(scores, pos) == pytest.approx(expected)


def test_metrics_against_base_rate():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 500)
    prior = np.bincount(labels, minlength=3) / 500
    base = classification_metrics(np.tile(prior, (500, 1)), labels, prior)
    for key in ("accuracy", "log_loss", "brier"):
        assert base[key] == pytest.approx(base[f"base_{key}"])
    assert base["auc"] == pytest.approx(0.5) and base["log_loss"] == pytest.approx(
        -(prior * np.log(prior)).sum()
    )
    perfect = classification_metrics(np.eye(3)[labels], labels, prior)
    assert perfect["accuracy"] == 1.0 and perfect["auc"] == 1.0 and perfect["brier"] == 0.0
    assert macro_auc(np.eye(3)[2 - labels], labels) < 0.5  # anti-correlated scores


def test_log_loss_gain_se_counts_clusters_not_rows():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    probs = rng.dirichlet(np.ones(3) * 5, 400)
    prior = np.full(3, 1 / 3)
    gain, se = log_loss_gain(probs, labels, prior, np.arange(400))
    # the same rows copied 5x inside their clusters carry no new information: same gain, same SE
    gain5, se5 = log_loss_gain(
        np.repeat(probs, 5, 0), np.repeat(labels, 5), prior, np.repeat(np.arange(400), 5)
    )
    assert gain5 == pytest.approx(gain) and se5 == pytest.approx(se, rel=0.01)
    assert log_loss_gain(np.tile(prior, (400, 1)), labels, prior, np.arange(400)) == (0.0, 0.0)


def test_temperature_scaling_recovers_overconfidence():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(8000, 3, generator=gen) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=gen)[:, 0]
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)


# --------------------------------------------------------------------------- cross-fitting plan
def _folds():
    return make_folds(
        700,
        SplitsConfig(n_folds=3, train_bars=200, val_bars=50, test_bars=80, embargo_bars=3),
        label_horizon=1,
        first_bar=40,
    )


def test_ranges_round_trip():
    bars = np.array([3, 4, 5, 9, 10, 20])
    assert bars_to_ranges(bars) == [[3, 6], [9, 11], [20, 21]]
    assert np.array_equal(ranges_to_bars(bars_to_ranges(bars)), bars)


def test_plan_tiles_bars_once_and_inner_fits_are_purged():
    folds, gap = _folds(), 4
    blocks = inner_blocks(folds[0], 4, gap)
    assert blocks[0][0] == folds[0].train[0] and blocks[-1][1] == folds[0].val[0]
    plan = walk_forward_plan(folds, blocks)
    covered = np.concatenate([np.arange(a, b) for _, _, a, b in plan])
    assert np.array_equal(covered, np.arange(folds[0].train[0], 700))  # every bar once, in order
    for a, b in blocks:
        fit = ranges_to_bars(inner_fit_ranges(folds[0], (a, b), gap))
        assert fit.size and np.abs(fit[:, None] - np.arange(a, b)[None]).min() > gap
        assert fit.max() < folds[0].train[1]
    for k, j, a, b in plan:
        if j == OUTER and k > 0:
            assert (a, b) == folds[k].test


def test_honesty_check_catches_a_leak():
    folds, gap = _folds(), 4
    blocks = inner_blocks(folds[0], 3, gap)
    fits = {(0, j): inner_fit_ranges(folds[0], blk, gap) for j, blk in enumerate(blocks)}
    fits.update({(f.index, OUTER): [f.train] for f in folds})
    src_fold, src_split = np.full(700, -1), np.full(700, OUTER)
    for k, j, a, b in walk_forward_plan(folds, blocks):
        src_fold[a:b], src_split[a:b] = k, j
    assert honesty_violations(src_fold, src_split, fits, gap) == []
    src_split[folds[0].train[0] + 5] = 1  # a bar of block 0 claimed by inner model 1, which trained on it
    problems = honesty_violations(src_fold, src_split, fits, gap)
    assert len(problems) == 1 and "fold 0 split 1" in problems[0]


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_shapes_and_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(0)
    names = [f"f{i}" for i in range(5)]
    model = build_model(name, SLModelParams(hidden=8), window=6, num_features=5).eval()
    x = torch.randn(7, 6, 5)
    assert model(x).shape == (7, 3)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(
        path,
        model,
        model=name,
        version="v",
        hparams=SLModelParams(hidden=8).model_dump(),
        window=6,
        feature_names=names,
        temperature=1.0,
        fold=0,
        split=-1,
        fit_ranges=[[0, 5]],
        fingerprint="fp",
    )
    assert set(torch.load(path, weights_only=True)) >= {"state_dict", "feature_names", "fit_ranges"}
    loaded, meta = load_checkpoint(path, names)
    assert torch.allclose(loaded(x), model(x)) and meta["fit_ranges"] == [[0, 5]]
    with pytest.raises(
        DataError, match=r"feature order differs at position 1: checkpoint has 'f1', store has 'f2'"
    ):
        load_checkpoint(path, ["f0", "f2", "f1", "f3", "f4"])
    with pytest.raises(DataError, match=r"only in store: \['volume_z'\]"):
        load_checkpoint(path, [*names, "volume_z"])


def test_torch_threads_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
