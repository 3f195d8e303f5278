"""Features, regime features, per-fold normalization and the `features` step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hmarl.config import build_config
from hmarl.data.canonical import CanonicalData, write_canonical
from hmarl.data.features import FEATURE_NAMES, compute_features
from hmarl.data.market import Market, build_store, market_from_canonical
from hmarl.data.regime import REGIME_NAMES, average_correlation, compute_regime
from hmarl.data.splits import folds_for
from hmarl.data.store import OHLCV, FeatureStore
from hmarl.errors import DataError, StepError
from hmarl.io import atomic_path, write_json
from hmarl.steps import runner

SPLITS = {"n_folds": 2, "train_bars": 100, "val_bars": 30, "test_bars": 40, "embargo_bars": 2}
CFG = build_config({"splits": SPLITS})  # warmup 60 + 100 + 2*3 + 30 + 2*40 = 276 bars needed
FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}


# --------------------------------------------------------------------------- a small random market
def random_market(num_bars: int = 320, num_symbols: int = 5, seed: int = 0) -> Market:
    rng = np.random.default_rng(seed)
    shape = (num_bars, num_symbols)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, shape), axis=0))
    prev = np.vstack([close[:1], close[:-1]])
    open_ = prev * np.exp(rng.normal(0.0, 0.005, shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.01, shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.01, shape)))
    volume = np.exp(rng.normal(13.0, 0.4, shape))
    ohlcv = np.stack([open_, high, low, close, volume], axis=-1)
    bench = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, num_bars)))
    stamps = pd.date_range("2015-01-02", periods=num_bars, freq="B", tz="UTC").as_unit("ns").asi8
    symbols = [f"S{i:02d}" for i in range(num_symbols)]
    meta = {"freq": "1D", "bar_seconds": 86400, "fingerprint": f"test-{seed}", "symbols": symbols}
    return Market(symbols, stamps, ohlcv, np.ones(shape, dtype=bool), bench, 252.0, {}, meta)


def mask(market: Market, symbol: int, start: int, end: int) -> None:
    """Mask bars ``start..end-1`` the canonical way: OHLC = previous close, volume 0."""
    market.tradable[start:end, symbol] = False
    market.ohlcv[start:end, symbol, :4] = market.ohlcv[max(start - 1, 0), symbol, 3]
    market.ohlcv[start:end, symbol, 4] = 0.0


def gappy_market(seed: int = 0) -> Market:
    market = random_market(seed=seed)
    mask(market, 0, 0, 90)  # listed late: no history before bar 90
    mask(market, 1, 150, 155)  # a short gap
    mask(market, 2, 200, 230)  # a long gap
    mask(market, 3, 100, 101)  # a single missing bar
    return market


def canonical_data(market: Market, exogenous: pd.DataFrame | None = None) -> CanonicalData:
    """The market as canonical frames (long bars sorted by symbol then timestamp)."""
    s, t = len(market.symbols), len(market.timestamps)
    stamps = pd.to_datetime(market.timestamps, utc=True).as_unit("ns")
    bars = pd.DataFrame({"symbol": np.repeat(market.symbols, t), "timestamp": np.tile(stamps, s)})
    for i, col in enumerate(OHLCV):
        bars[col] = market.ohlcv[..., i].T.ravel()
    bars["tradable"] = market.tradable.T.ravel()
    bench = pd.DataFrame({"timestamp": stamps, "close": market.benchmark})
    meta = {**market.meta, "bars_per_year": market.bars_per_year, "num_bars": t}
    return CanonicalData(bars, bench, exogenous, meta)


def write_canonical_dir(folder: Path, market: Market, exogenous: pd.DataFrame | None = None) -> dict:
    canon = canonical_data(market, exogenous)
    return write_canonical(folder, canon.bars, canon.benchmark, canon.exogenous, canon.meta)


def write_summary(folder: Path, status: str, fingerprint: str | None = None) -> Path:
    """A validate summary for the canonical data of ``fingerprint`` (default: ``folder/canonical``'s)."""
    if fingerprint is None and (folder.parent / "canonical" / "meta.json").exists():
        fingerprint = json.loads((folder.parent / "canonical" / "meta.json").read_text())["fingerprint"]
    if fingerprint is None and (folder / "canonical" / "meta.json").exists():
        fingerprint = json.loads((folder / "canonical" / "meta.json").read_text())["fingerprint"]
    write_json(folder / "summary.json", {"status": status, "fingerprint": fingerprint})
    return folder


def perturb_after(market: Market, t: int, seed: int) -> Market:
    """A copy whose prices, volumes and benchmark after bar ``t`` are randomly changed (still valid bars)."""
    rng = np.random.default_rng(seed)
    ohlcv = market.ohlcv.copy()
    n = ohlcv[t + 1 :].shape[:2]
    ohlcv[t + 1 :, :, :4] *= np.exp(rng.normal(0.0, 0.3, n))[..., None]
    ohlcv[t + 1 :, :, 4] *= np.exp(rng.normal(0.0, 1.0, n))
    bench = market.benchmark.copy()
    bench[t + 1 :] *= np.exp(rng.normal(0.0, 0.3, len(bench) - t - 1))
    return Market(
        market.symbols,
        market.timestamps,
        ohlcv,
        market.tradable,
        bench,
        market.bars_per_year,
        {},
        market.meta,
    )


# --------------------------------------------------------------------------- features
def test_exactly_23_uniquely_named_features_and_regime_names():
    assert len(FEATURE_NAMES) == 23
    assert len(set(FEATURE_NAMES)) == 23
    assert "volume_z" in FEATURE_NAMES
    assert len(set(REGIME_NAMES)) == len(REGIME_NAMES) >= 8
    market = random_market(num_bars=80, num_symbols=3)
    assert compute_features(market.ohlcv, market.tradable).shape == (80, 3, 23)
    assert compute_regime(market.ohlcv, market.tradable, market.benchmark, 252.0).shape == (
        80,
        len(REGIME_NAMES),
    )


@pytest.mark.parametrize("t", [0, 1, 3, 19, 20, 45, 59, 60, 61, 149, 200, 318])
def test_features_and_regime_at_or_before_t_ignore_the_future(t):
    market = gappy_market()
    future = perturb_after(market, t, seed=t)
    assert not np.allclose(future.ohlcv[t + 1 :], market.ohlcv[t + 1 :])
    for compute in (
        lambda m: compute_features(m.ohlcv, m.tradable, dtype=np.float64),
        lambda m: compute_regime(m.ohlcv, m.tradable, m.benchmark, m.bars_per_year),
    ):
        now, changed = compute(market), compute(future)
        np.testing.assert_array_equal(now[: t + 1], changed[: t + 1])  # bitwise, NaN == NaN
        assert not np.array_equal(now[t + 1 :], changed[t + 1 :], equal_nan=True)


def test_stored_features_and_mask_are_causal_too():
    t = 180
    market = gappy_market()
    store, future = build_store(CFG, market), build_store(CFG, perturb_after(market, t, seed=1))
    np.testing.assert_array_equal(store.features[: t + 1], future.features[: t + 1])
    np.testing.assert_array_equal(store.tradable[: t + 1], future.tradable[: t + 1])
    np.testing.assert_array_equal(store.regime[: t + 1], future.regime[: t + 1])


def test_volume_z_matches_its_definition():
    market = random_market(num_bars=40, num_symbols=2, seed=3)
    volume = market.ohlcv[:, 0, 4]
    volume[7] = 0.0  # a real zero-volume bar: log(1 + volume) keeps it finite
    z = compute_features(market.ohlcv, market.tradable, dtype=np.float64)[:, 0, FEATURE["volume_z"]]
    lv = np.log(volume + 1.0)
    for t in range(20, 40):
        prev = lv[t - 20 : t]
        assert z[t] == pytest.approx((lv[t] - prev.mean()) / prev.std(), rel=1e-9, abs=1e-12)
    # a window needs half of its 20 bars observed: defined from bar 10 on, over the bars seen so far
    assert np.isnan(z[:10]).all()
    assert z[10] == pytest.approx((lv[10] - lv[:10].mean()) / lv[:10].std(), rel=1e-9)


def test_volume_z_skips_masked_bars_in_its_window():
    market = random_market(num_bars=40, num_symbols=2, seed=4)
    mask(market, 0, 25, 28)
    z = compute_features(market.ohlcv, market.tradable, dtype=np.float64)[:, 0, FEATURE["volume_z"]]
    lv = np.log1p(market.ohlcv[:, 0, 4])
    prev = np.delete(lv[10:30], [15, 16, 17])  # bars 10..29 without the masked 25..27
    assert z[30] == pytest.approx((lv[30] - prev.mean()) / prev.std(), rel=1e-9)
    assert np.isnan(z[25:28]).all()


def test_masked_bars_never_enter_the_features():
    market = gappy_market(seed=5)
    garbage = Market(**{**market.__dict__, "ohlcv": market.ohlcv.copy()})
    rng = np.random.default_rng(0)
    hidden = ~market.tradable
    garbage.ohlcv[hidden] = rng.uniform(1e-3, 1e6, (hidden.sum(), 5))  # whatever sits in masked rows
    np.testing.assert_array_equal(
        compute_features(market.ohlcv, market.tradable), compute_features(garbage.ohlcv, garbage.tradable)
    )
    np.testing.assert_array_equal(
        compute_regime(market.ohlcv, market.tradable, market.benchmark, 252.0),
        compute_regime(garbage.ohlcv, garbage.tradable, garbage.benchmark, 252.0),
    )


def test_return_after_a_gap_is_the_real_move_and_volatility_skips_the_gap():
    market = gappy_market(seed=6)
    f = compute_features(market.ohlcv, market.tradable, dtype=np.float64)
    close = market.ohlcv[..., 3]
    # symbol 1 is masked on bars 150..154: bar 155's return spans the gap from the close of bar 149
    assert f[155, 1, FEATURE["ret_1"]] == pytest.approx(np.log(close[155, 1] / close[149, 1]), rel=1e-12)
    assert f[155, 1, FEATURE["gap"]] == pytest.approx(market.ohlcv[155, 1, 0] / close[149, 1] - 1, rel=1e-12)
    # vol_20 at bar 160 covers the returns of bars 141..160 that were observed, each measured from
    # the previous observed close
    seen = [i for i in range(140, 161) if not 150 <= i <= 154]
    returns = np.log(close[seen[1:], 1] / close[seen[:-1], 1])
    assert f[160, 1, FEATURE["vol_20"]] == pytest.approx(np.std(returns), rel=1e-9)


def test_store_is_finite_and_masks_warmup_gaps_and_undefined_bars():
    market = gappy_market(seed=7)
    store = build_store(CFG, market)
    assert store.features.dtype == np.float32 and store.features.shape == (320, 5, 23)
    assert np.isfinite(store.features).all() and np.isfinite(store.regime).all()
    assert not store.tradable[: CFG.features.warmup_bars].any()
    assert not (store.tradable & ~market.tradable).any()
    assert (store.features[~store.tradable] == 0).all()
    # symbol 0 lists at bar 90: ret_20 alone needs 20 bars of history; then it stays tradable
    first = 90 + int(np.argmax(store.tradable[90:, 0]))
    assert first >= 110 and store.tradable[first:, 0].all()
    # after its 30-bar gap (200..229) symbol 2 waits until every window holds half of its bars observed
    # again: the longest, ma_dist_50, needs 25 of the last 50 bars
    back = 230 + int(np.argmax(store.tradable[230:, 2]))
    assert market.tradable[back - 49 : back + 1, 2].sum() == 25 and store.tradable[back:, 2].all()
    # a single missing bar costs only that bar; an unbroken symbol is tradable right after warm-up
    assert store.tradable[60:, 3].sum() == 320 - 60 - 1 and not store.tradable[100, 3]
    assert store.tradable[60:, 4].all()
    # normalized features: the same scaling everywhere, 0 (the train mean) at non-tradable entries
    z = store.normalized(0)
    assert (z[~store.tradable] == 0).all()
    on = store.tradable
    expected = (store.features[on] - store.norm_mean[0]) / store.norm_std[0]
    np.testing.assert_allclose(z[on], expected, rtol=1e-5, atol=1e-5)


def test_norm_stats_come_from_each_folds_train_bars_only():
    market = gappy_market(seed=8)
    store = build_store(CFG, market)
    folds = folds_for(CFG, store.num_bars)
    assert store.norm_mean.shape == store.norm_std.shape == (2, 23)
    for fold in folds:
        start, end = fold.train
        x = store.features[start:end][store.tradable[start:end]].astype(np.float64)
        np.testing.assert_allclose(store.norm_mean[fold.index], x.mean(axis=0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(store.norm_std[fold.index], x.std(axis=0), rtol=1e-12, atol=1e-15)
    # fold 0 trains on bars < its train end: rewriting everything after that leaves its statistics alone
    after = build_store(CFG, perturb_after(market, folds[0].train[1] - 1, seed=2))
    np.testing.assert_array_equal(after.norm_mean[0], store.norm_mean[0])
    np.testing.assert_array_equal(after.norm_std[0], store.norm_std[0])
    assert not np.array_equal(after.norm_mean[1], store.norm_mean[1])  # fold 1 trains on later bars


def test_constant_feature_gets_a_floored_std():
    market = random_market(seed=9)
    market.ohlcv[..., :3] = market.ohlcv[..., 3:4]  # open == high == low == close on every bar
    store = build_store(CFG, market)
    i = FEATURE["intrabar_ret"]
    assert (store.features[..., i] == 0).all() and (store.norm_std[:, i] > 0).all()
    assert np.isfinite(store.normalized(1)).all()


# --------------------------------------------------------------------------- regime
def test_average_correlation_equals_the_sigma_weighted_pairwise_mean():
    rng = np.random.default_rng(10)
    common = rng.normal(0, 0.01, (200, 1))
    r = common * rng.uniform(0.5, 2.0, 6) + rng.normal(0, 0.01, (200, 6)) * rng.uniform(0.5, 3.0, 6)
    avg = average_correlation(r, 60)
    assert np.isnan(avg[:59]).all()
    for t in (59, 120, 199):
        w = r[t - 59 : t + 1]
        sd = w.std(axis=0)
        rho, weight = np.corrcoef(w.T), np.outer(sd, sd)
        off = ~np.eye(6, dtype=bool)
        assert avg[t] == pytest.approx((rho * weight)[off].sum() / weight[off].sum(), rel=1e-9)


def test_regime_features_follow_the_benchmark():
    market = random_market(seed=11)
    reg = compute_regime(market.ohlcv, market.tradable, market.benchmark, 252.0)
    col = {name: i for i, name in enumerate(REGIME_NAMES)}
    b = market.benchmark
    np.testing.assert_allclose(reg[:, col["mkt_drawdown"]], b / np.maximum.accumulate(b) - 1, rtol=1e-12)
    assert reg[100, col["mkt_ret_20"]] == pytest.approx(np.log(b[100] / b[80]), rel=1e-12)
    assert reg[250, col["mkt_ma_dist_200"]] == pytest.approx(b[250] / b[51:251].mean() - 1, rel=1e-9)
    assert reg[30, col["mkt_ma_dist_200"]] == pytest.approx(b[30] / b[:31].mean() - 1, rel=1e-9)  # short data
    breadth = reg[:, col["breadth_advancing"]]
    c = market.ohlcv[..., 3]
    np.testing.assert_allclose(breadth[1:], (c[1:] > c[:-1]).mean(axis=1))
    assert np.isfinite(reg[70:]).all()


# --------------------------------------------------------------------------- the step
def test_step_refuses_missing_or_failed_validation_and_runs_when_passed(tmp_path):
    canonical = tmp_path / "canonical"
    written = write_canonical_dir(canonical, gappy_market(seed=12))
    validation = tmp_path / "validate"
    validation.mkdir()
    ios = {"canonical": str(canonical), "validation": str(validation)}
    out = {"store": str(tmp_path / "features")}
    with pytest.raises(StepError, match="summary.json not found"):
        runner.execute("features", CFG, ios, out)
    write_summary(validation, "failed")
    with pytest.raises(StepError, match="status 'failed'"):
        runner.execute("features", CFG, ios, out)
    assert not (tmp_path / "features").exists()
    (validation / "summary.json").write_text("{not json")
    with pytest.raises(StepError, match="not valid JSON"):
        runner.execute("features", CFG, ios, out)

    write_summary(validation, "passed", fingerprint="0" * 64)  # passed, but for other bars (a re-ingest)
    with pytest.raises(StepError, match="refusing data that was not validated: .*fingerprint 000000000000"):
        runner.execute("features", CFG, ios, out)
    assert not (tmp_path / "features").exists()
    write_summary(validation, "passed")
    metrics = runner.execute("features", CFG, ios, out)
    assert metrics["nonfinite"] == 0 and metrics["bars"] == 320 and metrics["features"] == 23
    assert metrics["masked_bars"] == 90 + 5 + 30 + 1
    store = FeatureStore.load(tmp_path / "features")
    assert store.meta["fingerprint"] == written["fingerprint"] and store.meta["warmup_bars"] == 60
    assert store.meta["folds"] == json.loads(json.dumps([f.to_dict() for f in folds_for(CFG, 320)]))
    assert store.feature_names == list(FEATURE_NAMES) and store.regime_names == list(REGIME_NAMES)


def test_step_appends_exogenous_series_to_the_regime(tmp_path):
    market = random_market(seed=13)
    stamps = pd.to_datetime(market.timestamps, utc=True)
    vix = 20 + np.random.default_rng(0).normal(0, 2, 320)
    vix[100] = np.nan  # a missing exogenous value stays missing, the regime stays finite
    exo = pd.DataFrame({"timestamp": stamps, "vix__close": vix})
    canonical = tmp_path / "canonical"
    write_canonical_dir(canonical, market, exo)
    validation = write_summary(tmp_path, "passed")
    runner.execute(
        "features",
        CFG,
        {"canonical": str(canonical), "validation": str(validation)},
        {"store": str(tmp_path / "features")},
    )
    store = FeatureStore.load(tmp_path / "features")
    assert store.regime_names == [*REGIME_NAMES, "vix__close_z60"]
    assert store.regime.shape == (320, len(REGIME_NAMES) + 1) and np.isfinite(store.regime).all()
    prev = vix[140:200]
    assert store.regime[200, -1] == pytest.approx((vix[200] - prev.mean()) / prev.std(), rel=1e-5)


def test_bad_canonical_bars_are_named():
    market = random_market(num_bars=40, num_symbols=3, seed=14)
    canon = canonical_data(market)
    negative = canon.bars.copy()
    negative.loc[40 + 17, "close"] = -1.0  # S01 (rows 40..79), bar 17
    stamp = re.escape(str(pd.Timestamp(market.timestamps[17], tz="UTC")))
    with pytest.raises(DataError, match=f"close is not a positive number at symbol 'S01', timestamp {stamp}"):
        market_from_canonical(CanonicalData(negative, canon.benchmark, None, canon.meta))
    masked = negative.copy()
    masked.loc[40 + 17, "tradable"] = False  # whatever a masked bar holds is never read
    assert not market_from_canonical(CanonicalData(masked, canon.benchmark, None, canon.meta)).tradable[17, 1]
    shifted = canon.bars.copy()
    shifted.loc[100, "timestamp"] += pd.Timedelta(hours=1)  # one of S02's bars is off the calendar
    with pytest.raises(DataError, match="not a full"):
        market_from_canonical(CanonicalData(shifted, canon.benchmark, None, canon.meta))
    with pytest.raises(DataError, match="benchmark timestamps differ"):
        market_from_canonical(CanonicalData(canon.bars, canon.benchmark.iloc[1:], None, canon.meta))
    with pytest.raises(DataError, match="'bars_per_year' missing"):
        market_from_canonical(CanonicalData(canon.bars, canon.benchmark, None, {"symbols": market.symbols}))


def test_store_round_trip_with_mmap(tmp_path):
    store = build_store(CFG, gappy_market(seed=15))
    with atomic_path(tmp_path / "store") as tmp:
        store.save(tmp)
    loaded = FeatureStore.load(tmp_path / "store")
    assert isinstance(loaded.features, np.memmap) and isinstance(loaded.ohlcv, np.memmap)
    for name in (
        "features",
        "ohlcv",
        "tradable",
        "regime",
        "benchmark",
        "timestamps",
        "norm_mean",
        "norm_std",
    ):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(store, name))
    assert loaded.meta == json.loads(json.dumps(store.meta))
    np.testing.assert_array_equal(loaded.normalized(1, slice(100, 120)), store.normalized(1, slice(100, 120)))


# --------------------------------------------------------------------------- the real data set
def test_real_data_set_featurizes(tmp_path, shared_data):
    """The whole real set goes through; its speed is measured by bench/features.py, not here."""
    bars = pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021.parquet")
    bench = pd.read_parquet(shared_data / "us_large_caps_daily_2005_2021_benchmark.parquet")
    bars["tradable"] = True
    meta = {"symbols": sorted(bars["symbol"].unique()), "bars_per_year": 252.0, "freq": "1D"}
    market = market_from_canonical(CanonicalData(bars, bench, None, meta))
    cfg = build_config({})
    store = build_store(cfg, market)
    assert store.features.shape == (4103, 150, 23)
    assert np.isfinite(store.features).all() and np.isfinite(store.regime).all()
    assert store.tradable[cfg.features.warmup_bars :].all()  # no gaps in this set, all features defined
    with atomic_path(tmp_path / "store") as tmp:
        store.save(tmp)
    assert FeatureStore.load(tmp_path / "store").features.shape == (4103, 150, 23)
