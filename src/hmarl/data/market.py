"""Canonical bars as aligned arrays (:class:`Market`) and their features as a feature store.

The one featurization of bars: the features step builds the pipeline's store with it (per-fold
normalization), ``hmarl act`` / ``hmarl evaluate`` featurize new data with it under a model's statistics,
so a model sees its inputs computed one way.

Data without a benchmark (canonical meta ``benchmark: null``): the market reference that the regime features,
the master's benchmark state and its ``excess_return`` reward read is the universe's own equal-weight index
(the passive alternative the gate judges against), recorded in the store's meta as ``market_reference:
equal_weight_universe`` with ``benchmark: null``, so evaluation reports no benchmark series for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hmarl.config import ConfigError, HmarlConfig
from hmarl.data.benchmark import equal_weight_index
from hmarl.data.canonical import CanonicalData, has_benchmark
from hmarl.data.features import FEATURE_NAMES, compute_features, fold_norm_stats
from hmarl.data.readers import timestamps_ns
from hmarl.data.regime import REGIME_NAMES, compute_regime, exogenous_regime
from hmarl.data.splits import folds_for
from hmarl.data.store import OHLCV, FeatureStore
from hmarl.errors import DataError


@dataclass
class Market:
    """Canonical bars as aligned arrays on the common calendar."""

    symbols: list[str]
    timestamps: np.ndarray  # (T,) int64 ns UTC
    ohlcv: np.ndarray  # (T, S, 5) float64
    tradable: np.ndarray  # (T, S) bool
    benchmark: np.ndarray  # (T,) float64 close of the market reference (the benchmark, or see module doc)
    bars_per_year: float
    exogenous: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T,) float64
    meta: dict = field(default_factory=dict)  # the canonical meta.json


def market_from_canonical(canon: CanonicalData, source: str = "canonical") -> Market:
    """Reshape canonical frames (a full symbol x calendar grid, see :mod:`hmarl.data.canonical`) into arrays."""
    symbols = canon.symbols
    ohlcv = np.stack([canon.pivot(c).astype(np.float64) for c in OHLCV], axis=-1)
    tradable = canon.pivot("tradable").astype(bool)
    if ohlcv.shape[1] != len(symbols):
        raise DataError(f"{source}: bars hold {ohlcv.shape[1]} symbols, meta 'symbols' lists {len(symbols)}")
    calendar = timestamps_ns(canon.bars["timestamp"])[: ohlcv.shape[0]]

    def require(ok: np.ndarray, what: str) -> None:
        if not ok.all():
            ti, si = np.argwhere(~ok)[0]
            stamp = pd.Timestamp(calendar[ti], tz="UTC")
            raise DataError(f"{source}: {what} at symbol {symbols[si]!r}, timestamp {stamp}")

    finite = np.isfinite(ohlcv)
    for i, col in enumerate(OHLCV[:4]):
        require(~tradable | (finite[..., i] & (ohlcv[..., i] > 0)), f"{col} is not a positive number")
    require(~tradable | (finite[..., 4] & (ohlcv[..., 4] >= 0)), "volume is negative or not finite")

    series = {"benchmark": canon.benchmark, "exogenous": canon.exogenous}
    for name, frame in series.items():
        if frame is not None and not np.array_equal(timestamps_ns(frame["timestamp"]), calendar):
            raise DataError(f"{source}: {name} timestamps differ from the bars' calendar")
    bench = market_reference(canon, ohlcv, tradable)
    bad = ~(np.isfinite(bench) & (bench > 0))
    if bad.any():
        stamp = pd.Timestamp(calendar[np.argmax(bad)], tz="UTC")
        raise DataError(f"{source}: benchmark close is not a positive number at timestamp {stamp}")
    exo = canon.exogenous
    exo_columns = (
        {} if exo is None else {c: exo[c].to_numpy(dtype=np.float64) for c in exo if c != "timestamp"}
    )
    if "bars_per_year" not in canon.meta:
        raise DataError(f"{source}: meta key 'bars_per_year' missing")
    bars_per_year = float(canon.meta["bars_per_year"])
    return Market(symbols, calendar, ohlcv, tradable, bench, bars_per_year, exo_columns, dict(canon.meta))


def market_reference(canon: CanonicalData, ohlcv: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """The benchmark's close, or without one the universe's equal-weight index of tradable closes."""
    if canon.benchmark is not None:
        return canon.benchmark["close"].to_numpy(dtype=np.float64)
    close = np.where(tradable, ohlcv[..., OHLCV.index("close")], np.nan)
    return equal_weight_index({"close": close})["close"]


def market_features(market: Market, warmup_bars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(features, usable, regime, regime_names)`` of a market, as the store holds them (also used by
    ``hmarl act`` / ``hmarl evaluate`` on new data, so a model sees its inputs computed one way)."""
    features = compute_features(market.ohlcv, market.tradable)
    usable = market.tradable & np.isfinite(features).all(axis=-1)
    usable[:warmup_bars] = False
    features[~usable] = 0.0

    regime = compute_regime(market.ohlcv, market.tradable, market.benchmark, market.bars_per_year)
    regime_names = list(REGIME_NAMES)
    if market.exogenous:
        exo_names, exo = exogenous_regime(market.exogenous)
        regime, regime_names = np.concatenate([regime, exo], axis=1), regime_names + exo_names
    regime = np.where(np.isfinite(regime), regime, 0.0).astype(np.float32)
    return features, usable, regime, regime_names


def cash_rate_series(cfg: HmarlConfig, market: Market) -> np.ndarray | None:
    """The raw exogenous column named by ``env.cash_rate.series`` (None when no series is configured)."""
    name = cfg.env.cash_rate.series
    if not name:
        return None
    if name not in market.exogenous:
        raise ConfigError(
            f"env.cash_rate.series: {name!r} is not an exogenous column of the data "
            f"(have {sorted(market.exogenous)}; add its file to data.exogenous)"
        )
    return np.asarray(market.exogenous[name], dtype=np.float64)


def assemble_store(
    market: Market, computed: tuple, mean, std, cash_rate: np.ndarray | None = None, **meta
) -> FeatureStore:
    """A feature store of ``market`` from :func:`market_features` output and normalization statistics
    (per fold in the pipeline, the model fold's in ``hmarl act`` / ``hmarl evaluate``); ``meta`` adds
    the caller's keys to the data's identity; ``cash_rate``: :func:`cash_rate_series`."""
    features, usable, regime, regime_names = computed
    identity = {
        "symbols": market.symbols,
        "feature_names": list(FEATURE_NAMES),
        "regime_names": regime_names,
        "freq": market.meta.get("freq"),
        "bar_seconds": market.meta.get("bar_seconds"),
        "bars_per_year": market.bars_per_year,
        "calendar": market.meta.get("calendar"),
        "session_tz": market.meta.get("session_tz"),
        "fingerprint": market.meta.get("fingerprint"),
        "benchmark": market.meta.get("benchmark", market.meta.get("benchmark_symbol")),
        "benchmark_source": market.meta.get("benchmark_source"),
        "market_reference": "benchmark" if has_benchmark(market.meta) else "equal_weight_universe",
    }
    return FeatureStore(
        features=features,
        ohlcv=market.ohlcv,
        tradable=usable,
        regime=regime,
        benchmark=market.benchmark,
        timestamps=market.timestamps,
        norm_mean=mean,
        norm_std=std,
        meta={**identity, **meta},
        cash_rate=cash_rate,
    )


def build_store(cfg: HmarlConfig, market: Market) -> FeatureStore:
    """Features, regime, usable mask and per-fold train statistics for one market."""
    folds = folds_for(cfg, len(market.timestamps))
    computed = market_features(market, cfg.features.warmup_bars)
    mean, std = fold_norm_stats(computed[0], computed[1], [fold.train for fold in folds])
    return assemble_store(
        market,
        computed,
        mean,
        std,
        cash_rate=cash_rate_series(cfg, market),
        folds=[fold.to_dict() for fold in folds],
        window=cfg.features.window,
        label_horizon=cfg.features.label_horizon,
        warmup_bars=cfg.features.warmup_bars,
        missing_value=0.0,  # raw entries of non-tradable bars (warm-up, masked, undefined)
    )
