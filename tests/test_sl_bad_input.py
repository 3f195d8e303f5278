"""A store or cache that does not fit the params fails with an error naming the mismatch; nothing is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hmarl.errors import DataError
from hmarl.steps.runner import execute
from sl_fixtures import one_thread, shared_sl_cache, shared_store, small_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def store_copy(tmp_path_factory, tmp_path):
    src = shared_store(tmp_path_factory, "planted_alpha")
    dst = tmp_path / "features"
    shutil.copytree(src, dst)
    return dst


def _edit_meta(store, **changes):
    meta = json.loads((store / "meta.json").read_text())
    meta.update(changes)
    (store / "meta.json").write_text(json.dumps(meta))
    return meta


def _assert_fails_clean(tmp_path, store, match, *overrides):
    out = tmp_path / "out" / "sl_cache"
    with pytest.raises(DataError, match=match):
        execute(
            "sl_cache", small_config("planted_alpha", *overrides), {"store": str(store)}, {"cache": str(out)}
        )
    assert not out.exists() and not any((tmp_path / "out").iterdir())


def test_swapped_features(store_copy, tmp_path):
    names = json.loads((store_copy / "meta.json").read_text())["feature_names"]
    names[0], names[1] = names[1], names[0]
    _edit_meta(store_copy, feature_names=names)
    _assert_fails_clean(
        tmp_path, store_copy, r"feature order differs at position 0: store has 'ret_2', code has 'ret_1'"
    )


def test_renamed_feature(store_copy, tmp_path):
    names = json.loads((store_copy / "meta.json").read_text())["feature_names"]
    _edit_meta(store_copy, feature_names=[("volume_surprise" if n == "volume_z" else n) for n in names])
    _assert_fails_clean(
        tmp_path, store_copy, r"only in code: \['volume_z'\], only in store: \['volume_surprise'\]"
    )


def test_feature_array_shape_differs_from_meta(store_copy, tmp_path):
    features = np.load(store_copy / "features.npy")
    np.save(store_copy / "features.npy", features[..., :-1])
    _assert_fails_clean(tmp_path, store_copy, "feature_names do not match the array shape")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("features.window=20", r"built with features.window=24, params say 20"),
        ("splits.n_folds=3", r"normalization statistics have shape \(2, 23\), expected \(splits.n_folds=3"),
        ("splits.test_bars=70", r"folds in meta.json .* differ from the folds the splits params give"),
    ],
)
def test_store_built_with_other_params(store_copy, tmp_path, override, match):
    _assert_fails_clean(tmp_path, store_copy, match, override)


def test_missing_fingerprint(store_copy, tmp_path):
    _edit_meta(store_copy, fingerprint=None)
    _assert_fails_clean(tmp_path, store_copy, "no data fingerprint")


def test_encoder_refuses_an_sl_cache_of_another_store(tmp_path_factory, tmp_path):
    store = shared_store(tmp_path_factory, "planted_alpha")
    foreign = tmp_path / "sl_cache"
    shutil.copytree(shared_sl_cache(tmp_path_factory, "planted_alpha"), foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    (foreign / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0123abcd"}))
    out = tmp_path / "out" / "encoder"
    with pytest.raises(DataError, match=r"data fingerprint '0123abcd' differs from the feature store's"):
        execute(
            "pretrain_encoder",
            small_config("planted_alpha"),
            {"store": str(store), "sl_cache": str(foreign)},
            {"encoder": str(out)},
        )
    assert not out.exists() and not any((tmp_path / "out").iterdir())
