"""Market tensors the simulator steps through, taken once from a :class:`FeatureStore`.

Validation happens here, at construction: a NaN/inf or non-positive open/high/low/close, or a
NaN/inf/negative volume, on a *tradable* bar is refused with a :class:`DataError` naming the symbol and
the bar. Bars marked not tradable (gaps, warm-up) may hold anything; their prices are replaced by the
last tradable close (the first one before any), used only to mark a held position, never to trade.

Per bar ``t`` and symbol the simulator needs ``open``, ``close``, ``tradable`` and two slippage
inputs computed **causally** from bars ``<= t`` only: ``sigma`` (rolling std of close-to-close log
returns) and ``adv`` (rolling mean dollar volume). An order decided at ``t`` uses ``sigma[t]`` and
``adv[t]``; it fills at ``open[t + 1]``.

``cash_rate[t]`` is the per-bar rate positive cash earns from the close of ``t`` to the close of ``t + 1``
(``env.cash_rate``: annual / bars_per_year, a constant or a series known at ``t``); it is also the
risk-free rate of the evaluation's excess returns. ``has_benchmark`` is False when the data has no
benchmark (canonical meta ``benchmark: null``): ``benchmark`` then holds the universe's equal-weight index
(the master's market reference, set by the features step), which no report shows as a benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hmarl.data.canonical import has_benchmark as canonical_has_benchmark
from hmarl.data.store import FeatureStore
from hmarl.env.params import EnvConfig
from hmarl.errors import DataError

# rows of MarketData.table
OPEN, CLOSE, TRADABLE, SIGMA, ADV = range(5)
FIELDS = ("open", "close", "tradable", "sigma", "adv")
_MIN_ADV = 1.0  # dollars; keeps the impact term finite for zero-volume history


@dataclass
class MarketData:
    table: torch.Tensor  # (5, T, S) open, close, tradable (0/1), sigma, adv
    benchmark: torch.Tensor  # (T,)
    regime: torch.Tensor  # (T, R) float32
    bars_per_year: float
    symbols: list[str]
    timestamps: np.ndarray
    cash_rate: torch.Tensor | None = None  # (T,) per-bar rate on positive cash; None: 0
    risk_free: str = "constant 0 a year"  # how cash_rate was set (for the reports)
    has_benchmark: bool = True

    def __post_init__(self) -> None:
        if self.cash_rate is None:
            self.cash_rate = torch.zeros(
                self.table.shape[1], dtype=self.table.dtype, device=self.table.device
            )

    @property
    def num_bars(self) -> int:
        return int(self.table.shape[1])

    @property
    def num_symbols(self) -> int:
        return int(self.table.shape[2])

    @property
    def device(self) -> torch.device:
        return self.table.device

    def to(self, device: str | torch.device) -> MarketData:
        """The same market with its tensors on ``device`` (itself when they are there)."""
        if self.table.device == torch.device(device):
            return self
        return dataclasses.replace(
            self,
            table=self.table.to(device),
            benchmark=self.benchmark.to(device),
            regime=self.regime.to(device),
            cash_rate=self.cash_rate.to(device),
        )

    @classmethod
    def from_store(
        cls,
        store: FeatureStore,
        cfg: EnvConfig,
        device: str | torch.device = "cpu",
        symbols: list[int] | None = None,
    ) -> MarketData:
        """Tensors of ``store`` (optionally a subset of symbol columns) on ``device``."""
        cols = slice(None) if symbols is None else list(symbols)
        names = store.symbols if symbols is None else [store.symbols[i] for i in symbols]
        if cfg.cash_rate.series and store.cash_rate is None:
            raise DataError(
                f"env.cash_rate.series={cfg.cash_rate.series!r}: the feature store holds no cash-rate series "
                "(rebuild the features with that exogenous column in data.exogenous)"
            )
        # without a benchmark the store holds the universe's equal-weight index as the master's market
        # reference (features step); it trains the master but is never reported as a benchmark
        has_benchmark = store.benchmark is not None and canonical_has_benchmark(store.meta)
        return cls.from_arrays(
            open_=store.price("open")[:, cols],
            high=store.price("high")[:, cols],
            low=store.price("low")[:, cols],
            close=store.price("close")[:, cols],
            volume=store.price("volume")[:, cols],
            tradable=np.asarray(store.tradable)[:, cols],
            benchmark=store.benchmark if store.benchmark is not None else np.ones(store.num_bars),
            regime=store.regime,
            bars_per_year=store.bars_per_year,
            symbols=names,
            timestamps=store.timestamps,
            cfg=cfg,
            device=device,
            cash_rate_series=store.cash_rate if cfg.cash_rate.series else None,
            has_benchmark=has_benchmark,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        open_: np.ndarray,
        high: np.ndarray,
        low: np.ndarray,
        close: np.ndarray,
        volume: np.ndarray,
        tradable: np.ndarray,
        benchmark: np.ndarray,
        regime: np.ndarray,
        bars_per_year: float,
        symbols: list[str],
        timestamps: np.ndarray,
        cfg: EnvConfig,
        device: str | torch.device = "cpu",
        cash_rate_series: np.ndarray | None = None,
        has_benchmark: bool = True,
    ) -> MarketData:
        """``cash_rate_series``: ``(T,)`` annual rates of ``env.cash_rate.series`` (NaN: no value yet)."""
        prices = {"open": open_, "high": high, "low": low, "close": close}
        prices = {k: np.asarray(v, dtype=np.float64) for k, v in prices.items()}
        volume = np.asarray(volume, dtype=np.float64)
        tradable = np.asarray(tradable, dtype=bool)
        t, s = tradable.shape
        if len(symbols) != s or len(timestamps) != t:
            raise DataError(
                f"market: {len(symbols)} symbols / {len(timestamps)} timestamps for arrays of shape {(t, s)}"
            )
        for name, arr in [*prices.items(), ("volume", volume)]:
            if arr.shape != (t, s):
                raise DataError(f"market: {name} has shape {arr.shape}, expected {(t, s)}")
            bad = ~np.isfinite(arr) | (arr < 0 if name == "volume" else arr <= 0)
            _refuse(
                bad & tradable,
                name,
                symbols,
                timestamps,
                "volume must be finite and >= 0" if name == "volume" else "prices must be finite and > 0",
            )
        bench = np.asarray(benchmark, dtype=np.float64)
        _refuse(
            (~np.isfinite(bench) | (bench <= 0))[:, None],
            "benchmark",
            ["benchmark"],
            timestamps,
            "prices must be finite and > 0",
        )
        regime = np.asarray(regime, dtype=np.float32)
        if regime.ndim != 2 or regime.shape[0] != t or not np.isfinite(regime).all():
            raise DataError(
                f"market: regime must be a finite (T, R) array with T={t}, got shape {regime.shape}"
            )

        close_f = _fill_untradable(prices["close"], tradable)
        open_f = np.where(tradable, prices["open"], close_f)
        dollar_volume = np.where(tradable, prices["close"] * volume, 0.0)
        log_ret = np.zeros_like(close_f)
        log_ret[1:] = np.log(close_f[1:] / close_f[:-1])
        sigma = (
            pd.DataFrame(log_ret).rolling(cfg.vol_window, min_periods=2).std(ddof=0).fillna(0.0).to_numpy()
        )
        adv = pd.DataFrame(dollar_volume).rolling(cfg.adv_window, min_periods=1).mean().to_numpy()
        adv = np.maximum(adv, _MIN_ADV)
        dtype = getattr(torch, cfg.dtype)
        table = np.stack([open_f, close_f, tradable.astype(np.float64), sigma, adv])
        annual = annual_cash_rate(cfg, cash_rate_series, t)
        return cls(
            table=torch.tensor(table, dtype=dtype, device=device),
            benchmark=torch.tensor(bench, dtype=dtype, device=device),
            regime=torch.tensor(regime, device=device),
            bars_per_year=float(bars_per_year),
            symbols=list(symbols),
            timestamps=np.asarray(timestamps),
            cash_rate=torch.tensor(annual / float(bars_per_year), dtype=dtype, device=device),
            risk_free=cfg.cash_rate.describe(),
            has_benchmark=has_benchmark,
        )


def annual_cash_rate(cfg: EnvConfig, series: np.ndarray | None, num_bars: int) -> np.ndarray:
    """``(T,)`` annual rate on cash per bar: the configured series where it has a value (as-of backward,
    scaled from percent when ``percent``), the constant ``annual`` elsewhere."""
    rate = np.full(num_bars, float(cfg.cash_rate.annual))
    if series is None:
        return rate
    values = np.asarray(series, dtype=np.float64).reshape(-1)
    if values.shape != (num_bars,):
        raise DataError(f"env.cash_rate.series: {values.shape[0]} values for {num_bars} bars")
    values = values * (0.01 if cfg.cash_rate.percent else 1.0)
    bad = np.isfinite(values) & ((values < -0.05) | (values > 1.0))
    if bad.any():
        raise DataError(
            f"env.cash_rate.series={cfg.cash_rate.series!r}: annual rate {values[bad][0]!r} at bar "
            f"{int(np.argmax(bad))} is outside [-0.05, 1] (percent values need env.cash_rate.percent: true)"
        )
    return np.where(np.isfinite(values), values, rate)


def _refuse(bad: np.ndarray, name: str, symbols: list[str], timestamps: np.ndarray, why: str) -> None:
    if not bad.any():
        return
    bar, sym = (int(i) for i in np.argwhere(bad)[0])
    stamp = (
        pd.Timestamp(int(timestamps[bar]), unit="ns", tz="UTC")
        if np.issubdtype(np.asarray(timestamps).dtype, np.integer)
        else timestamps[bar]
    )
    raise DataError(
        f"market: bad {name} for symbol {symbols[sym]!r} at bar {bar} ({stamp}): {why} "
        f"({int(bad.sum())} bad value(s) in {name})"
    )


def _fill_untradable(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Close with untradable bars set to the last tradable close (first one before any; 1.0 if none)."""
    frame = pd.DataFrame(np.where(tradable, close, np.nan))
    return frame.ffill().bfill().fillna(1.0).to_numpy()
