"""The synthetic market: determinism, raw schema, OHLC sanity, planted IC, nothing-to-learn, crashes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hmarl.config import ConfigError, SyntheticConfig
from hmarl.data.synthetic import CALM, CRASH, TURBULENT, generate, simulate

SIGMAS = 4.0  # tolerance of the statistical checks, in standard errors


def cfg(**kw) -> SyntheticConfig:
    return SyntheticConfig(**{"num_symbols": 40, "num_bars": 800, **kw})


def grid(bars: pd.DataFrame, column: str, num_symbols: int) -> np.ndarray:
    """(T, S) array of a symbol-major long frame."""
    return bars[column].to_numpy().reshape(num_symbols, -1).T


def volume_z(volume: np.ndarray, window: int = 20) -> np.ndarray:
    """The feature documented to carry the planted signal: trailing z-score of log volume."""
    lv = pd.DataFrame(np.log(volume))
    return ((lv - lv.rolling(window).mean()) / lv.rolling(window).std()).to_numpy()


def pooled_ic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pooled Pearson corr of (T, S) panels and its standard error.

    The SE comes from the time series of per-bar cross-sectional means of the standardized products
    (robust to the cross-sectional correlation that factor returns create), as in Fama-MacBeth.
    """
    rows = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
    x, y = x[rows], y[rows]
    zx, zy = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    per_bar = (zx * zy).mean(axis=1)
    return float(per_bar.mean()), float(per_bar.std(ddof=1) / np.sqrt(len(per_bar)))


def next_returns(market) -> np.ndarray:
    close = grid(market.bars, "close", len(market.symbols))
    return close[1:] / close[:-1] - 1


def test_same_seed_same_frames_other_seed_differs():
    a_bars, a_bench = generate(cfg(seed=11))
    b_bars, b_bench = generate(cfg(seed=11))
    pd.testing.assert_frame_equal(a_bars, b_bars)
    pd.testing.assert_frame_equal(a_bench, b_bench)
    c_bars, _ = generate(cfg(seed=12))
    assert not np.allclose(a_bars["close"].to_numpy(), c_bars["close"].to_numpy())


def test_raw_schema_ohlc_and_daily_calendar():
    c = cfg(num_symbols=12, num_bars=300)
    bars, bench = generate(c, benchmark_symbol="IDX")
    assert list(bars.columns) == ["symbol", "timestamp", "open", "high", "low", "close", "volume"]
    assert str(bars["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert len(bars) == 12 * 300 and bars["symbol"].nunique() == 12
    for frame in (bars, bench):
        o, h, low, cl = (frame[k].to_numpy() for k in ("open", "high", "low", "close"))
        assert (o > 0).all() and (cl > 0).all()
        assert (h >= np.maximum(o, cl)).all() and (low <= np.minimum(o, cl)).all()
    assert (bars["volume"] >= 1).all() and (bars["volume"] == bars["volume"].round()).all()
    ts = pd.DatetimeIndex(bars["timestamp"].iloc[:300])
    assert (ts.day_of_week < 5).all() and (ts.hour == 14).all() and (ts.minute == 30).all()
    assert ts.is_monotonic_increasing and ts[0] == pd.Timestamp("2012-01-03 14:30", tz="UTC")
    assert set(bench["symbol"]) == {"IDX"} and len(bench) == 300
    # the benchmark is the equal-weight index: its return is the mean of the symbols' returns
    close = grid(bars, "close", 12)
    expected = (close[1:] / close[:-1]).mean(axis=1)
    np.testing.assert_allclose(bench["close"].to_numpy()[1:] / bench["close"].to_numpy()[:-1], expected)


def test_open_gaps_and_heterogeneous_liquidity():
    m = simulate(cfg())
    s = len(m.symbols)
    open_, close = grid(m.bars, "open", s), grid(m.bars, "close", s)
    gap = np.log(open_[1:] / close[:-1])
    assert np.abs(gap).mean() > 1e-3  # opens gap away from the previous close
    dollar = np.median(close * grid(m.bars, "volume", s), axis=0)
    assert dollar.max() / dollar.min() > 100  # liquidity spans decades: top-N selection matters


def test_factor_correlation_and_volatility_regimes():
    m = simulate(cfg(mode="random_walk", num_symbols=60, num_bars=2000))
    s = len(m.symbols)
    r = np.diff(np.log(grid(m.bars, "close", s)), axis=0)
    corr = np.corrcoef(r.T)
    mean_pair = (corr.sum() - s) / (s * s - s)
    assert 0.1 < mean_pair < 0.6
    calm, turbulent = m.regime[1:] == CALM, m.regime[1:] == TURBULENT
    assert calm.sum() > 100 and turbulent.sum() > 100
    assert r[turbulent].std() > 1.5 * r[calm].std()


@pytest.mark.parametrize("ic", [0.05, 0.15])
def test_planted_alpha_realized_ic_matches_param(ic):
    m = simulate(cfg(mode="planted_alpha", ic=ic, num_symbols=120, num_bars=1500))
    realized, se = pooled_ic(m.signal[:-1], next_returns(m))
    assert abs(realized - ic) < SIGMAS * se, (realized, ic, se)
    assert se < 0.01  # the bound is tight enough to mean something


def test_planted_signal_is_carried_by_the_volume_zscore():
    m = simulate(cfg(mode="planted_alpha", ic=0.1, num_symbols=120, num_bars=1500))
    vz = volume_z(grid(m.bars, "volume", len(m.symbols)))
    ok = np.isfinite(vz)
    fidelity = np.corrcoef(vz[ok], m.signal[ok])[0, 1]
    assert fidelity > 0.9
    feature_ic, se = pooled_ic(vz[:-1], next_returns(m))
    assert abs(feature_ic - 0.1 * fidelity) < SIGMAS * se


def test_random_walk_has_nothing_to_learn():
    m = simulate(cfg(mode="random_walk", num_symbols=120, num_bars=1500))
    nxt = next_returns(m)
    vz = volume_z(grid(m.bars, "volume", len(m.symbols)))
    close = grid(m.bars, "close", len(m.symbols))
    past = np.vstack([np.full((1, close.shape[1]), np.nan), close[1:-1] / close[:-2] - 1])
    for name, x in {"signal": m.signal[:-1], "volume_z": vz[:-1], "last return": past}.items():
        ic, se = pooled_ic(x, nxt)
        assert abs(ic) < SIGMAS * se, (name, ic, se)
    assert m.loading == 0.0


def max_drawdown(level: np.ndarray) -> float:
    return float(1 - (level / np.maximum.accumulate(level)).min())


def test_regime_mode_crashes_produce_large_drawdowns():
    c = cfg(mode="regime", crash_prob=0.01, num_symbols=30, num_bars=1500, seed=5)
    m = simulate(c)
    crash = m.regime == CRASH
    assert crash.sum() >= 10
    index = m.benchmark["close"].to_numpy()
    r = np.diff(np.log(index))
    assert r[crash[1:]].mean() < -0.5 * c.crash_depth / c.crash_days  # sharply negative drift
    assert max_drawdown(index) > 0.3
    calm = simulate(cfg(mode="random_walk", num_symbols=30, num_bars=1500, seed=5))
    assert max_drawdown(index) > max_drawdown(calm.benchmark["close"].to_numpy()) + 0.1
    # the deepest trough sits in (or right after) a crash
    trough = int(np.argmin(index / np.maximum.accumulate(index)))
    assert crash[max(0, trough - 5) : trough + 1].any()


def test_planted_alpha_with_crashes_keeps_its_signal():
    """``crashes: true``: crash regimes on top of the planted signal (both hierarchy levels have work)."""
    c = cfg(
        mode="planted_alpha", crashes=True, crash_prob=0.01, ic=0.2, num_symbols=30, num_bars=1500, seed=5
    )
    m = simulate(c)
    assert (m.regime == CRASH).sum() >= 10
    assert m.loading > 0
    plain = simulate(cfg(mode="planted_alpha", ic=0.2, num_symbols=30, num_bars=1500, seed=5))
    assert not (plain.regime == CRASH).any()
    assert (
        max_drawdown(m.benchmark["close"].to_numpy())
        > max_drawdown(plain.benchmark["close"].to_numpy()) + 0.1
    )
    close = m.bars.pivot(index="timestamp", columns="symbol", values="close").to_numpy()
    nxt = np.diff(np.log(close), axis=0)
    ic, se = pooled_ic(m.signal[:-1], nxt)
    assert ic > 0.2 - 4 * se


@pytest.mark.parametrize(("freq", "per_day"), [("1h", 7), ("5min", 78)])
def test_intraday_bars_inside_the_new_york_session(freq, per_day):
    m = simulate(cfg(freq=freq, num_symbols=5, num_bars=per_day * 20))
    assert m.bars_per_day == per_day
    local = m.timestamps.tz_convert("America/New_York")
    minutes = local.hour * 60 + local.minute
    assert (minutes >= 9 * 60 + 30).all() and (minutes < 16 * 60).all()
    assert (local.day_of_week < 5).all()
    assert (pd.Series(local.date).value_counts() == per_day).all()
    bars = m.bars
    assert (bars["high"] >= np.maximum(bars["open"], bars["close"])).all()


@pytest.mark.parametrize("freq", ["2D", "nonsense", "8h"])
def test_bad_synthetic_freq_is_a_config_error(freq):
    with pytest.raises(ConfigError, match="synthetic.freq"):
        simulate(cfg(freq=freq))
