"""Synthetic market: the embedded default data (``data.source: synthetic``), seeded and deterministic.

Every mode has factor-correlated log returns (a market factor plus ``num_factors - 1`` sector factors,
and idiosyncratic noise), Markov-switching volatility (calm / turbulent), OHLC bars whose open gaps from
the previous close, lognormal volume that rises with |return| and turbulence, and per-symbol liquidity
spread over three decades of dollar volume (so top-N selection matters). Daily bars sit on business
days at 14:30 UTC; intraday bars (``1h``, ``5min``, ...) inside the 09:30-16:00 America/New_York
session. No holidays, so a year has 365.25 * 5/7 ~ 260.9 sessions.

Modes
-----
``random_walk``
    Nothing to learn: next-bar returns are independent of everything observable (volatility clusters,
    but the sign of the next return is unpredictable). A signal is still planted in volume with zero
    predictive loading, so the observable statistics match ``planted_alpha``.
``planted_alpha``
    A per-symbol i.i.d. N(0, 1) signal ``s_t`` is observable in the bar's volume surprise::

        log volume_t = base_s + 0.50 s_t + 0.15 (|z_t| - E|z|) + 0.30 log(vol regime_t) + AR(1) + 0.08 noise

    and the next bar's idiosyncratic return loads on it, scaled so that the pooled (all bars and symbols)
    Pearson correlation of ``s_t`` with the next close-to-close return equals ``ic``. The open gap does not
    carry the planted move, so an order filled at the next open captures it. The feature that captures
    the signal (corr ~0.9 with ``s_t``) is the trailing log-volume z-score::

        lv = log(volume); volume_z_t = (lv_t - mean(lv_{t-19..t})) / std(lv_{t-19..t})
        # pandas: (lv - lv.rolling(20).mean()) / lv.rolling(20).std()   per symbol, current bar included
``regime``
    Adds market-wide crashes: from the calm regime a crash starts with probability ``crash_prob`` per
    bar, lasts ~``crash_days`` days with sharply negative market drift (``crash_depth`` log drop on
    average, scaled by each symbol's market beta) and 3x volatility, then a recovery regime wins back
    half of the drop over ~3x as long at 1.5x volatility. No planted signal.

``crashes: true`` adds the same crash regimes to ``planted_alpha`` or ``random_walk``: a market with
something for both levels of the hierarchy (a stock-picking edge for the symbol agents, crashes for the
master's risk control).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hmarl.config import ConfigError, SyntheticConfig
from hmarl.data.benchmark import equal_weight_index
from hmarl.data.readers import VALUE_COLUMNS

BUSINESS_DAYS_PER_YEAR = 365.25 * 5 / 7
DAILY_TIME = pd.Timedelta(hours=14, minutes=30)  # UTC label of a daily bar
SESSION_TZ = "America/New_York"
SESSION_OPEN, SESSION_CLOSE = pd.Timedelta(hours=9, minutes=30), pd.Timedelta(hours=16)

REGIME_NAMES = ("calm", "turbulent", "crash", "recovery")
CALM, TURBULENT, CRASH, RECOVERY = range(4)
VOL_MULT = np.array([0.8, 1.7, 3.0, 1.5])  # volatility multiplier per regime
CALM_DAYS, TURBULENT_DAYS = 120.0, 30.0  # mean regime lengths
RECOVERY_SPAN, RECOVERY_SHARE = 3.0, 0.5  # recovery: 3x the crash length, wins back half the drop

GAP_SHARE_DAILY, GAP_SHARE_INTRADAY = 0.25, 0.02  # share of a bar's variance in its open gap
WICK_SCALE = 0.5  # high/low excursion beyond open/close, in units of the bar's intraday vol
VOLUME_SIGNAL, VOLUME_ABS_RETURN, VOLUME_REGIME, VOLUME_NOISE = 0.50, 0.15, 0.30, 0.08
VOLUME_AR_PHI, VOLUME_AR_SD = 0.97, 0.15  # slow liquidity drift (removed by a trailing z-score)


@dataclass(frozen=True)
class SyntheticMarket:
    bars: pd.DataFrame  # raw long schema: symbol, timestamp, open, high, low, close, volume
    benchmark: pd.DataFrame  # the same schema, one symbol: the equal-weight index of all symbols
    symbols: list[str]
    timestamps: pd.DatetimeIndex  # (T,) UTC
    signal: np.ndarray  # (T, S) planted signal s_t (observable in volume_t, predicts return_{t+1})
    regime: np.ndarray  # (T,) int8 index into REGIME_NAMES
    loading: float  # planted loading b of the standardized next return on s_t (0 unless planted_alpha)
    bars_per_day: int
    bars_per_year: float


def bar_timestamps(
    start: str, num_bars: int, freq: str, calendar: str | None = None
) -> tuple[pd.DatetimeIndex, int]:
    """``num_bars`` UTC bar starts from ``start`` and the number of bars per session: on the sessions of the
    exchange ``calendar`` (``data.calendar``) when given, else on Mon-Fri business days, 09:30-16:00 New York."""
    try:
        step = pd.Timedelta(freq)
    except ValueError:
        raise ConfigError(f"synthetic.freq: {freq!r} is not a bar length such as 1D, 1h, 5min") from None
    try:
        first = pd.Timestamp(start)
    except ValueError:
        raise ConfigError(f"synthetic.start: {start!r} is not a date") from None
    if calendar is not None and step <= pd.Timedelta(days=1):
        from hmarl.data.exchange import session_bar_starts

        return session_bar_starts(calendar, first, num_bars, step)
    if step == pd.Timedelta(days=1):
        days = pd.bdate_range(first, periods=num_bars)
        return (days + DAILY_TIME).tz_localize("UTC").as_unit("ns"), 1
    session = SESSION_CLOSE - SESSION_OPEN
    if not pd.Timedelta(seconds=1) <= step <= session or step % pd.Timedelta(seconds=1):
        raise ConfigError(f"synthetic.freq: {freq!r} must be 1D or whole seconds up to the 6.5 h session")
    offsets = np.arange(SESSION_OPEN.value, SESSION_CLOSE.value, step.value).astype("timedelta64[ns]")
    days = pd.bdate_range(first, periods=math.ceil(num_bars / len(offsets)))
    local = (days.values[:, None] + offsets[None, :]).ravel()[:num_bars]
    return pd.DatetimeIndex(local).tz_localize(SESSION_TZ).tz_convert("UTC").as_unit("ns"), len(offsets)


def regime_path(
    rng: np.random.Generator, num_bars: int, bars_per_day: int, cfg: SyntheticConfig
) -> np.ndarray:
    """Semi-Markov regime labels, sampled spell by spell (starts calm)."""
    calm_exit = 1.0 / (CALM_DAYS * bars_per_day)
    crash = cfg.crash_prob if cfg.mode == "regime" or cfg.crashes else 0.0
    crash_bars = cfg.crash_days * bars_per_day
    labels = np.empty(num_bars, dtype=np.int8)
    t, state = 0, CALM
    while t < num_bars:
        if state == CALM:
            hazard = min(1.0, calm_exit + crash)
            n = int(rng.geometric(hazard))
            nxt = CRASH if rng.random() < crash / hazard else TURBULENT
        elif state == TURBULENT:
            n, nxt = int(rng.geometric(1.0 / (TURBULENT_DAYS * bars_per_day))), CALM
        elif state == CRASH:
            n, nxt = max(2, round(crash_bars * rng.uniform(0.5, 1.5))), RECOVERY
        else:
            n, nxt = max(2, round(RECOVERY_SPAN * crash_bars * rng.uniform(0.5, 1.5))), CALM
        labels[t : t + n] = state
        t, state = t + n, nxt
    return labels


def _vol_multiplier(regime: np.ndarray) -> np.ndarray:
    """Regime vol multipliers scaled so the calm/turbulent mixture has unit mean variance."""
    p_calm = CALM_DAYS / (CALM_DAYS + TURBULENT_DAYS)
    norm = math.sqrt(p_calm * VOL_MULT[CALM] ** 2 + (1 - p_calm) * VOL_MULT[TURBULENT] ** 2)
    return VOL_MULT[regime] / norm


def _regime_drift(regime: np.ndarray, bars_per_day: int, cfg: SyntheticConfig) -> np.ndarray:
    crash_bars = cfg.crash_days * bars_per_day
    per_regime = np.array(
        [
            0.0,
            0.0,
            -cfg.crash_depth / crash_bars,
            RECOVERY_SHARE * cfg.crash_depth / (RECOVERY_SPAN * crash_bars),
        ]
    )
    return per_regime[regime]


def _loadings(rng: np.random.Generator, num_symbols: int, num_factors: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm factor loadings (S, K) -- market factor + one sector each -- and market betas (S,)."""
    raw = np.zeros((num_symbols, num_factors))
    raw[:, 0] = rng.uniform(0.6, 1.4, num_symbols)
    if num_factors > 1:
        sector = rng.permutation(np.arange(num_symbols) % (num_factors - 1)) + 1
        raw[np.arange(num_symbols), sector] = rng.uniform(0.5, 1.0, num_symbols)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True), raw[:, 0]


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float, sd: float) -> np.ndarray:
    shocks = rng.standard_normal(shape) * sd * math.sqrt(1 - phi**2)
    out = np.empty(shape)
    out[0] = rng.standard_normal(shape[1]) * sd  # stationary start
    for t in range(1, shape[0]):  # a loop over bars, vectorized over symbols
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def planted_loading(cfg: SyntheticConfig, sigma: np.ndarray) -> float:
    """Loading b that makes the pooled corr(s_t, r_{t+1}) equal ``cfg.ic`` given per-bar vols ``sigma``.

    With ``r = sigma (b s + sqrt(1 - b^2) e)`` the pooled correlation is ``b E[sigma] / sqrt(E[sigma^2])``
    (heterogeneous vols attenuate it), so ``b = ic sqrt(E[sigma^2]) / E[sigma]``.
    """
    if cfg.mode != "planted_alpha":
        return 0.0
    b = cfg.ic * math.sqrt(float(np.mean(sigma**2))) / float(np.mean(sigma))
    if b >= 1.0:
        raise ConfigError(
            f"synthetic.ic: {cfg.ic} is too high for this volatility mix (needs loading {b:.2f} < 1)"
        )
    return b


def simulate(
    cfg: SyntheticConfig, benchmark_symbol: str = "SPY", calendar: str | None = None
) -> SyntheticMarket:
    rng = np.random.default_rng(cfg.seed)
    stamps, per_day = bar_timestamps(cfg.start, cfg.num_bars, cfg.freq, calendar)
    t_bars, n_sym = cfg.num_bars, cfg.num_symbols
    per_year = per_day * BUSINESS_DAYS_PER_YEAR
    symbols = [f"S{i:0{max(3, len(str(n_sym - 1)))}d}" for i in range(n_sym)]

    regime = regime_path(rng, t_bars, per_day, cfg)
    scale = np.exp(0.3 * rng.standard_normal(n_sym))
    scale /= math.sqrt(float(np.mean(scale**2)))
    systematic_share = rng.uniform(0.25, 0.5, n_sym)
    loadings, beta = _loadings(rng, n_sym, cfg.num_factors)
    log_p0 = rng.uniform(math.log(10), math.log(500), n_sym)
    log_dollar_volume = rng.uniform(math.log(2e6), math.log(2e9), n_sym)

    factors = rng.standard_normal((t_bars, cfg.num_factors))
    idio = rng.standard_normal((t_bars, n_sym))
    z = np.sqrt(systematic_share) * (factors @ loadings.T) + np.sqrt(1 - systematic_share) * idio
    signal = rng.standard_normal((t_bars, n_sym))
    mult = _vol_multiplier(regime)
    sigma = (cfg.annual_vol / math.sqrt(per_year)) * scale[None, :] * mult[:, None]
    b = planted_loading(cfg, sigma[1:])
    planted = np.zeros((t_bars, n_sym))
    planted[1:] = b * sigma[1:] * signal[:-1]
    noise_sd = sigma * math.sqrt(1 - b**2)
    drift = cfg.drift / per_year + beta[None, :] * _regime_drift(regime, per_day, cfg)[:, None]
    unplanted = drift + noise_sd * z
    log_ret = unplanted + planted

    # open gap: a Brownian-bridge share w of the unplanted move (independent of the rest of the bar)
    w = GAP_SHARE_DAILY if per_day == 1 else GAP_SHARE_INTRADAY
    gap = w * unplanted + math.sqrt(w * (1 - w)) * noise_sd * rng.standard_normal((t_bars, n_sym))
    log_close = log_p0[None, :] + np.cumsum(log_ret, axis=0)
    log_open = np.vstack([log_p0[None, :], log_close[:-1]]) + gap
    wick = WICK_SCALE * sigma * math.sqrt(1 - w)
    log_high = np.maximum(log_open, log_close) + np.abs(rng.standard_normal((t_bars, n_sym))) * wick
    log_low = np.minimum(log_open, log_close) - np.abs(rng.standard_normal((t_bars, n_sym))) * wick

    abs_move = np.abs((log_ret - drift) / sigma) - math.sqrt(2 / math.pi)
    log_volume = (
        (log_dollar_volume - log_p0)[None, :]
        + VOLUME_SIGNAL * signal
        + VOLUME_ABS_RETURN * abs_move
        + VOLUME_REGIME * np.log(mult)[:, None]
        + _ar1(rng, (t_bars, n_sym), VOLUME_AR_PHI, VOLUME_AR_SD)
        + VOLUME_NOISE * rng.standard_normal((t_bars, n_sym))
    )
    prices = {
        "open": np.exp(log_open),
        "high": np.exp(log_high),
        "low": np.exp(log_low),
        "close": np.exp(log_close),
        "volume": np.maximum(np.round(np.exp(log_volume)), 1.0),
    }
    bars = pd.DataFrame(
        {
            "symbol": pd.array(np.repeat(np.asarray(symbols, dtype=object), t_bars), dtype="str"),
            "timestamp": stamps[np.tile(np.arange(t_bars), n_sym)],
            **{c: prices[c].T.ravel() for c in VALUE_COLUMNS},
        }
    )
    index = equal_weight_index(prices)
    benchmark = pd.DataFrame(
        {
            "symbol": pd.array([benchmark_symbol] * t_bars, dtype="str"),
            "timestamp": stamps,
            **{c: index[c] for c in VALUE_COLUMNS},
        }
    )
    return SyntheticMarket(bars, benchmark, symbols, stamps, signal, regime, b, per_day, per_year)


def generate(
    cfg: SyntheticConfig, benchmark_symbol: str = "SPY", calendar: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bars, benchmark) in the raw long schema of real data (on ``calendar``'s sessions when given); same
    config and seed => same frames."""
    market = simulate(cfg, benchmark_symbol, calendar)
    return market.bars, market.benchmark
