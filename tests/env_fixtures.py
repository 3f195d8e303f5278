"""Small synthetic feature stores and env configs for the simulator tests (tests/test_env_*.py)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from hmarl.data.store import FeatureStore
from hmarl.env.params import EnvConfig, RewardConfig

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "us_large_caps_daily_2005_2021.parquet"


def make_store(
    num_bars: int = 300,
    num_symbols: int = 6,
    num_features: int = 4,
    seed: int = 0,
    vol: float = 0.03,
    untradable_fraction: float = 0.0,
) -> FeatureStore:
    """Random-walk OHLCV with consistent highs/lows, volumes, a benchmark, regime and features."""
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.0003, vol, size=(num_bars, num_symbols))
    close = 50.0 * np.exp(np.cumsum(ret, axis=0))
    gap = rng.normal(0.0, vol / 3, size=close.shape)
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(gap)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, vol / 4, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, vol / 4, close.shape)))
    volume = rng.uniform(2e4, 2e5, size=close.shape)
    ohlcv = np.stack([open_, high, low, close, volume], axis=2)
    tradable = rng.random(close.shape) >= untradable_fraction
    return store_from_arrays(ohlcv, tradable, num_features=num_features, seed=seed)


def store_from_arrays(
    ohlcv: np.ndarray,
    tradable: np.ndarray,
    num_features: int = 4,
    seed: int = 0,
    symbols: list[str] | None = None,
    benchmark: np.ndarray | None = None,
) -> FeatureStore:
    rng = np.random.default_rng(seed + 1)
    t, s, _ = ohlcv.shape
    if benchmark is None:
        benchmark = np.nan_to_num(ohlcv[:, :, 3], nan=1.0).mean(axis=1)
    stamps = pd.bdate_range("2015-01-02", periods=t, tz="UTC").as_unit("ns").asi8.astype(np.int64)
    feats = rng.normal(size=(t, s, num_features)).astype(np.float32)
    return FeatureStore(
        features=feats,
        ohlcv=ohlcv.astype(np.float64),
        tradable=tradable.astype(bool),
        regime=rng.normal(size=(t, 2)).astype(np.float32),
        benchmark=np.asarray(benchmark, dtype=np.float64),
        timestamps=stamps,
        norm_mean=np.zeros((1, num_features), np.float32),
        norm_std=np.ones((1, num_features), np.float32),
        meta={
            "symbols": symbols or [f"S{i:03d}" for i in range(s)],
            "feature_names": [f"f{i}" for i in range(num_features)],
            "regime_names": ["trend", "vol"],
            "bars_per_year": 252.0,
            "window": 8,
        },
    )


@functools.lru_cache(maxsize=4)
def load_real_store(num_symbols: int | None = None) -> FeatureStore | None:
    """The real daily data reshaped to a store (file sorted by symbol then timestamp, complete).
    Cached: callers must not modify it."""
    if not REAL_DATA.exists():
        return None
    frame = pd.read_parquet(
        REAL_DATA, columns=["symbol", "timestamp", "open", "high", "low", "close", "volume"]
    )
    symbols = list(dict.fromkeys(frame["symbol"]))[:num_symbols]
    frame = frame[frame["symbol"].isin(symbols)]
    t = len(frame) // len(symbols)
    ohlcv = (
        frame[["open", "high", "low", "close", "volume"]]
        .to_numpy()
        .reshape(len(symbols), t, 5)
        .transpose(1, 0, 2)
    )
    bench_path = REAL_DATA.with_name("us_large_caps_daily_2005_2021_benchmark.parquet")
    benchmark = pd.read_parquet(bench_path)["close"].to_numpy() if bench_path.exists() else None
    return store_from_arrays(
        np.ascontiguousarray(ohlcv), np.ones((t, len(symbols)), bool), symbols=symbols, benchmark=benchmark
    )


# backend used by env_config() unless a test names one (tests parametrize it over BACKENDS)
DEFAULT_BACKEND = {"name": "auto"}


def backends() -> list[str]:
    """The simulator backends available here: torch always, native where it is prebuilt or a C compiler
    exists (a compiler that fails to build it fails the native tests instead of dropping them)."""
    from hmarl import cbuild
    from hmarl.env import native

    return ["torch", "native"] if cbuild.compiler() is not None or native.load() is not None else ["torch"]


def env_config(**overrides) -> EnvConfig:
    base = {"num_envs": 4, "episode_length": 64, "backend": DEFAULT_BACKEND["name"]}
    base.update(overrides)
    return EnvConfig(**base)


def reward_config(**overrides) -> RewardConfig:
    return RewardConfig(**overrides)


def run_without_compiler(code: str, tmp_path: Path) -> str:
    """stdout of ``python -c code`` in the repo root with no C compiler (``CC`` names a missing one), no
    prebuilt kernels and an empty build cache, so every C path falls back to torch; the cache must stay empty."""
    env = {
        **os.environ,
        "CC": str(tmp_path / "no-such-cc"),
        "HMARL_CACHE": str(tmp_path / "cache"),
        "HMARL_KERNEL_DIR": str(tmp_path / "no-kernels"),
    }
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert not any((tmp_path / "cache").glob("*.so"))
    return out.stdout
