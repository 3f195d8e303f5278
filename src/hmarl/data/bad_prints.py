"""Bad prints: a price far outside the symbol's own recent volatility that comes straight back.

A ×1000 close on one bar, or a one-bar spike in the high, is a data error, not a market move; a crisis day
(MS +87 % on 2008-10-13) is a move the market kept. Counting returns beyond a fixed bound cannot tell them
apart (a single ×1000 print is 1 row in 10,000); the shape can. For each bar and each price p of
open/high/low/close:

* ``out = ln(p_t / close_{t-1})``: the move into the print, ``back = ln(close_{t+1} / p_t)``: the move after;
* ``sigma_t``: the symbol's robust volatility over the ``window`` bars before t,
  1.4826 × median |close-to-close log return| (a median, so one earlier print cannot inflate it),
  floored at ``SIGMA_FLOOR``;
* the print's score is ``min(|out|, |back|) / sigma_t`` when ``back`` gives back at least ``reversion`` of
  ``out`` (opposite sign, ``-back / out >= reversion``), else 0.

A bar whose open/close score exceeds ``validation.bad_print_sigmas``, or whose high/low score exceeds
``validation.bad_print_sigmas_high_low``, is a bad print. The high and low get a wider threshold because
genuine intrabar extremes revert by nature (flash-crash lows). On the shipped daily data (150 US large caps,
2005-2021; window 60, reversion 0.7) the largest genuine scores are 13.9 (close), 18.2 (open), 15.6 (high)
and 31.1 (low: MDT on 2015-08-24; the 2010-05-06 flash crash is next), hence the defaults 25 and 50; a ×1000
print scores in the hundreds. The newest bar of a symbol has no next bar, so it cannot be judged (its score
is NaN). Genuine events that still look like this can be allow-listed (``validation.allow_bad_prints``:
symbol + timestamp or trading date).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BODY = ("open", "close")
EXTREMES = ("high", "low")
MAD_TO_SIGMA = 1.4826  # median |x| of a normal variable = 0.6745 sigma
SIGMA_FLOOR = 1e-3  # per bar: flat (stale) histories would make every move infinitely many sigmas
MIN_HISTORY = 5  # bars of history before a print can be judged (too few: the score is NaN)


def robust_sigma(close: pd.Series, symbol: pd.Series, window: int) -> np.ndarray:
    """Per row: 1.4826 × median |log return| of the symbol's ``window`` bars before it (NaN too early)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a 1e-308 print: inf score
        ret = np.log(close / close.groupby(symbol, sort=False).shift(1))
    abs_ret = ret.abs().groupby(symbol, sort=False).shift(1)  # strictly before the bar
    med = abs_ret.groupby(symbol, sort=False).rolling(window, min_periods=MIN_HISTORY).median()
    med = med.reset_index(level=0, drop=True).sort_index()
    return np.maximum(MAD_TO_SIGMA * med.to_numpy(dtype=np.float64), SIGMA_FLOOR)


def print_scores(
    bars: pd.DataFrame, window: int, reversion: float, columns: tuple[str, ...] = BODY
) -> np.ndarray:
    """Bad-print score (robust sigmas) of ``columns`` of each row of a frame sorted by symbol, timestamp."""
    symbol = bars["symbol"]
    close = bars["close"].astype(np.float64)
    by_symbol = close.groupby(symbol, sort=False)
    prev, nxt = by_symbol.shift(1).to_numpy(), by_symbol.shift(-1).to_numpy()
    sigma = robust_sigma(close, symbol, window)
    score = np.zeros(len(bars))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a 1e-308 print: inf score
        for col in columns:
            price = bars[col].to_numpy(dtype=np.float64)
            out, back = np.log(price / prev), np.log(nxt / price)
            reverts = (out * back < 0) & (-back / out >= reversion)
            size = np.minimum(np.abs(out), np.abs(back)) / sigma
            score = np.maximum(score, np.where(reverts & np.isfinite(size), size, 0.0))
    unknown = np.isnan(prev) | np.isnan(nxt) | np.isnan(sigma)
    return np.where(unknown, np.nan, score)


def allowed_rows(bars: pd.DataFrame, allow: list, tz: str) -> np.ndarray:
    """Rows named by ``allow`` (items with ``symbol`` and ``timestamp``: an instant, or a date matching the
    bar's trading date in ``tz``)."""
    mask = np.zeros(len(bars), dtype=bool)
    if not allow:
        return mask
    stamps = pd.DatetimeIndex(bars["timestamp"])
    dates = stamps.tz_convert(tz).strftime("%Y-%m-%d")
    midnight_utc = bool((stamps == stamps.normalize()).all())  # date-only labels keep their UTC date
    if midnight_utc:
        dates = stamps.strftime("%Y-%m-%d")
    symbols = bars["symbol"].to_numpy(dtype=object)
    for item in allow:
        text = str(item.timestamp).strip()
        if len(text) == 10:  # a trading date
            hit = np.asarray(dates == text)
        else:
            when = pd.Timestamp(text)
            when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
            hit = np.asarray(stamps == when)
        mask |= hit & (symbols == item.symbol)
    return mask
