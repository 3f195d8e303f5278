"""The feature store: one ``(time, symbol, feature)`` float32 array plus aligned market arrays.

Everything downstream (simulator, SL models, encoder, evaluation) indexes into it by bar and symbol;
nothing copies windows. Layout of a store folder::

    features.npy     (T, S, F) float32  raw causal features (normalize with ``norm_*`` of a fold)
    ohlcv.npy        (T, S, 5) float64  open, high, low, close, volume
    tradable.npy     (T, S)    bool     False where the bar is missing (gap_rule=mask) or in warm-up
    regime.npy       (T, R)    float32  market regime features (causal)
    benchmark.npy    (T,)      float64  benchmark close (e.g. SPY) on the same calendar
    timestamps.npy   (T,)      int64    bar start, ns since epoch, UTC
    norm.npz         mean, std (n_folds, F): statistics of each fold's train bars only
    cash_rate.npy    (T,)      float64  optional: annual rate of env.cash_rate.series (NaN before its first value)
    meta.json        symbols, feature_names, regime_names, freq, bars_per_year, fingerprint, folds, ...

``load`` memory-maps the big arrays, so opening a store is instant and costs no RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmarl.errors import DataError
from hmarl.io import read_json, write_json

OHLCV = ("open", "high", "low", "close", "volume")
_ARRAYS = ("features", "ohlcv", "tradable", "regime", "benchmark", "timestamps")


@dataclass
class FeatureStore:
    features: np.ndarray
    ohlcv: np.ndarray
    tradable: np.ndarray
    regime: np.ndarray
    benchmark: np.ndarray
    timestamps: np.ndarray
    norm_mean: np.ndarray
    norm_std: np.ndarray
    meta: dict = field(default_factory=dict)
    cash_rate: np.ndarray | None = None  # (T,) annual rate on cash, only when env.cash_rate.series is set

    @property
    def symbols(self) -> list[str]:
        return list(self.meta["symbols"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def regime_names(self) -> list[str]:
        return list(self.meta["regime_names"])

    @property
    def bars_per_year(self) -> float:
        return float(self.meta["bars_per_year"])

    @property
    def num_bars(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_symbols(self) -> int:
        return int(self.features.shape[1])

    def price(self, name: str) -> np.ndarray:
        """``(T, S)`` view of one OHLCV column."""
        return self.ohlcv[:, :, OHLCV.index(name)]

    def normalized(self, fold: int, bars: np.ndarray | slice | None = None) -> np.ndarray:
        """Features of ``bars`` scaled with fold ``fold``'s train statistics; 0 where not tradable."""
        x = self.features if bars is None else self.features[bars]
        usable = self.tradable if bars is None else self.tradable[bars]
        z = (x - self.norm_mean[fold]) / self.norm_std[fold]
        return np.where(usable[..., None], z, 0.0).astype(np.float32)

    def check(self) -> None:
        t, s, f = self.features.shape
        expect = {
            "ohlcv": (t, s, 5),
            "tradable": (t, s),
            "benchmark": (t,),
            "timestamps": (t,),
        }
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                raise DataError(
                    f"feature store: {name} has shape {getattr(self, name).shape}, expected {shape}"
                )
        if self.cash_rate is not None and np.shape(self.cash_rate) != (t,):
            raise DataError(f"feature store: cash_rate has shape {np.shape(self.cash_rate)}, expected {(t,)}")
        if self.regime.shape[0] != t:
            raise DataError(f"feature store: regime has {self.regime.shape[0]} bars, expected {t}")
        if len(self.meta.get("symbols", [])) != s or len(self.meta.get("feature_names", [])) != f:
            raise DataError("feature store: meta symbols/feature_names do not match the array shape")

    def save(self, path: str | Path) -> None:
        """Write into ``path`` (a new folder; callers wrap it in :func:`hmarl.io.atomic_path`)."""
        self.check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(path / f"{name}.npy", getattr(self, name))
        if self.cash_rate is not None:
            np.save(path / "cash_rate.npy", np.asarray(self.cash_rate, dtype=np.float64))
        np.savez(path / "norm.npz", mean=self.norm_mean, std=self.norm_std)
        write_json(path / "meta.json", self.meta)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> FeatureStore:
        path = Path(path)
        if not (path / "meta.json").exists():
            raise DataError(f"{path}: not a feature store (meta.json missing)")
        mode = "r" if mmap else None
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in _ARRAYS}
        with np.load(path / "norm.npz") as norm:
            mean, std = norm["mean"], norm["std"]
        rate = np.load(path / "cash_rate.npy") if (path / "cash_rate.npy").exists() else None
        store = cls(
            **arrays, norm_mean=mean, norm_std=std, meta=read_json(path / "meta.json"), cash_rate=rate
        )
        store.check()
        return store
