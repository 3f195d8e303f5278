"""A desk's inputs as the model reads them: new bars featurized with the pipeline's own code
(:mod:`hmarl.data.market`) over the whole history given, checked against the model (symbols, feature list,
regime features, bar frequency, calendar; a difference is refused, naming it) and normalized with the model
fold's train statistics; :func:`latest_inputs` is what a decision for the newest bar reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hmarl.data.market import Market, assemble_store, cash_rate_series, market_features
from hmarl.data.store import FeatureStore
from hmarl.env.market import MarketData
from hmarl.errors import DataError
from hmarl.serve.bundle import Bundle
from hmarl.sl.inputs import feature_mismatch, model_inputs


def check_data(bundle: Bundle, store: FeatureStore, where: str) -> None:
    """DataError naming how ``store`` (features of the data given) differs from what the model knows."""
    for key, what in (("freq", "bar frequency"), ("calendar", "calendar")):  # bundles before these: unchecked
        if key in bundle.data_meta and store.meta.get(key) != bundle.data_meta[key]:
            raise DataError(
                f"{where}: {what} {store.meta.get(key)!r} differs from the model's {bundle.data_meta[key]!r} "
                f"(it was trained on {bundle.data_meta.get('freq')} bars, calendar "
                f"{bundle.data_meta.get('calendar')}; give it data of that frequency and data.calendar)"
            )
    if store.symbols != bundle.symbols:
        missing = [s for s in bundle.symbols if s not in store.symbols]
        extra = [s for s in store.symbols if s not in bundle.symbols]
        what = f"missing {missing}, unexpected {extra}" if missing or extra else "same symbols, another order"
        raise DataError(f"{where}: symbols differ from the model's ({what})")
    if store.feature_names != bundle.feature_names:
        raise DataError(
            f"{where}: {feature_mismatch(store.feature_names, bundle.feature_names, 'data', 'model')}"
        )
    if store.regime_names != bundle.regime_names:
        raise DataError(
            f"{where}: regime features {store.regime_names} differ from the model's {bundle.regime_names} "
            "(exogenous series?)"
        )
    need = bundle.cfg.features.warmup_bars + bundle.window
    if store.num_bars < need:
        raise DataError(f"{where}: {store.num_bars} bars; the model needs at least {need} (warm-up + window)")


def with_model_norm(bundle: Bundle, store: FeatureStore, where: str = "data") -> FeatureStore:
    """``store`` checked against the model, holding the model fold's train statistics as its only fold
    (``model_inputs(store, 0)`` is then what the model's SL models, encoder and agents read)."""
    check_data(bundle, store, where)
    return dataclasses.replace(store, norm_mean=bundle.norm_mean[None], norm_std=bundle.norm_std[None])


def featurize(bundle: Bundle, market: Market, where: str = "data") -> FeatureStore:
    """New bars as the pipeline's feature store (its own code, over the whole history given: EMA-type
    features depend on where they start), normalized with the model's statistics."""
    warmup = bundle.cfg.features.warmup_bars
    store = assemble_store(
        market,
        market_features(market, warmup),
        bundle.norm_mean[None],
        bundle.norm_std[None],
        cash_rate=cash_rate_series(bundle.cfg, market),
        window=bundle.window,
        warmup_bars=warmup,
    )
    return with_model_norm(bundle, store, where)


@dataclass
class LatestInputs:
    windows: torch.Tensor  # (S, W, F) normalized feature windows ending at the newest bar
    market: MarketData  # the history plus one placeholder bar (never observed: nothing is filled)
    timestamp: pd.Timestamp


def latest_inputs(bundle: Bundle, market: Market, where: str = "data") -> LatestInputs:
    store = featurize(bundle, market, where)
    z = model_inputs(store, 0)[-bundle.window :]
    pad = lambda a: np.concatenate([a, a[-1:]])  # noqa: E731 (the placeholder bar repeats the newest)
    data = MarketData.from_arrays(
        open_=pad(store.price("open")),
        high=pad(store.price("high")),
        low=pad(store.price("low")),
        close=pad(store.price("close")),
        volume=pad(store.price("volume")),
        tradable=pad(store.tradable),
        benchmark=pad(store.benchmark),
        regime=pad(store.regime),
        bars_per_year=store.bars_per_year,
        symbols=store.symbols,
        timestamps=np.concatenate([store.timestamps, store.timestamps[-1:] + 1]),
        cfg=bundle.cfg.env,
    )
    stamp = pd.Timestamp(int(store.timestamps[-1]), tz="UTC")
    return LatestInputs(z.transpose(0, 1).contiguous(), data, stamp)
