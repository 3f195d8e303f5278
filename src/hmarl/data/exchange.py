"""Exchange calendars (``data.calendar``): the bars a market should have, from ``exchange_calendars``.

Why ``exchange_calendars`` (4.13) and not ``pandas_market_calendars`` (5.5): the latter is a layer over the
former (it depends on it) and adds nothing used here. ``exchange_calendars`` gives every session with its
open and close in UTC (early closes, lunch breaks, ad-hoc closures such as Hurricane Sandy or national days
of mourning), the bar starts of any period within them (``trading_index``), and round-the-clock calendars
(``24/7``, ``24/5``); it installs with pure-Python dependencies and works with pandas 3.1 / numpy 2.4.
It costs ~1 s to import, so it is imported only here, when a calendar is set.

Each bar gets a *slot*: its index in the calendar's sequence of expected bars (sessions for day bars; bar
starts within sessions for intraday bars, the session's last bar cut at an early close). Consecutive bars
of the data whose slots differ by more than one skipped expected bars: a real gap. Holidays and early
closes have no slots, so they are no gaps. A bar outside every session has no slot (``off_session``).
Intraday bars are labelled by their start (a bar starting at the open is slot 0 of its session).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from pandas.errors import Pandas4Warning

from hmarl.config import ConfigError
from hmarl.data.calendar import Frequency, session_days
from hmarl.errors import DataError

_PAD = pd.Timedelta(days=7)  # the calendar spans the data with a margin on both sides


@contextmanager
def _quiet_pandas():
    """exchange_calendars 4.13 still reads ``Series.values`` of tz-aware data, which pandas 3.1 deprecates
    (Pandas4Warning): harmless until pandas 4, and not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Pandas4Warning)
        yield


@lru_cache(maxsize=8)
def _calendar(name: str, start: pd.Timestamp, end: pd.Timestamp):
    import exchange_calendars as xcals

    try:
        with _quiet_pandas():
            return xcals.get_calendar(name, start=start, end=end)
    except xcals.errors.InvalidCalendarName:
        raise ConfigError(
            f"data.calendar: unknown calendar {name!r} (exchange_calendars names such as XNYS, XLON, XTKS, "
            "24/7, 24/5; null for the data's own calendar)"
        ) from None
    except ValueError as exc:  # a span outside what the calendar knows
        raise ConfigError(
            f"data.calendar: {name!r} cannot cover {start.date()} .. {end.date()}: {exc}"
        ) from None


def check_calendar_name(name: str | None) -> str | None:
    """``name`` when exchange_calendars knows it (ConfigError naming ``data.calendar`` otherwise)."""
    if name is not None:
        _calendar(name, pd.Timestamp("2020-01-01"), pd.Timestamp("2020-02-01"))
    return name


@dataclass(frozen=True)
class ExpectedBars:
    """The calendar's expected bars over a span: slot i starts at ``starts[i]`` and ends at ``ends[i]``
    (intraday), or is the session whose trading date is day number ``days[i]`` (day bars)."""

    starts: np.ndarray  # int64 ns UTC (intraday) | empty
    ends: np.ndarray
    days: np.ndarray  # int64 day numbers (day bars) | empty


def _grid(name: str, first: pd.Timestamp, last: pd.Timestamp, freq: Frequency) -> ExpectedBars:
    """Expected bars of the sessions from date ``first`` to date ``last`` (naive dates, inclusive)."""
    cal = _calendar(name, first, last)
    lo, hi = max(first, cal.first_session), min(last, cal.last_session)
    if freq.day_based:
        days = cal.sessions_in_range(lo, hi).to_numpy().astype("datetime64[D]").astype(np.int64)
        return ExpectedBars(np.empty(0, np.int64), np.empty(0, np.int64), days)
    index = cal.trading_index(
        lo, hi, period=pd.Timedelta(seconds=freq.bar_seconds), intervals=True, force=True
    )
    starts, ends = (np.asarray(side.as_unit("ns").asi8, dtype=np.int64) for side in (index.left, index.right))
    return ExpectedBars(starts, ends, np.empty(0, np.int64))


def _span_dates(ts_ns: np.ndarray) -> tuple[pd.Timestamp, pd.Timestamp]:
    ends = np.array([ts_ns[0], ts_ns[-1]], dtype=np.int64)
    days = pd.to_datetime(ends, utc=True).tz_localize(None).normalize()
    return days[0], days[1]


def bar_slots(ts_ns: np.ndarray, name: str, freq: Frequency, tz: str) -> tuple[np.ndarray, np.ndarray]:
    """``(slot, off_session)`` of sorted bar timestamps: the index of each bar's expected bar (-1 when the
    bar lies outside every session, flagged in ``off_session``)."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if ts_ns.size == 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    first, last = _span_dates(ts_ns)
    grid = _grid(name, first - _PAD, last + _PAD, freq)
    if freq.day_based:
        day = session_days(ts_ns, tz)
        slot = np.searchsorted(grid.days, day)
        inside = (slot < len(grid.days)) & (grid.days[np.minimum(slot, len(grid.days) - 1)] == day)
    else:
        slot = np.searchsorted(grid.starts, ts_ns, side="right") - 1
        inside = (slot >= 0) & (ts_ns < grid.ends[np.maximum(slot, 0)])
    return np.where(inside, slot, -1).astype(np.int64), ~inside


def calendar_gaps(ts_ns: np.ndarray, name: str, freq: Frequency, tz: str) -> tuple[np.ndarray, np.ndarray]:
    """``(gap, off_session)``: expected bars of ``name`` skipped before each bar (NaN for the first, and for
    bars off the calendar, which the off-session check reports instead)."""
    slot, off = bar_slots(ts_ns, name, freq, tz)
    gap = np.full(len(slot), np.nan)
    if len(slot) > 1:
        on = np.flatnonzero(~off)
        steps = np.diff(slot[on]) - 1.0
        gap[on[1:]] = np.maximum(steps, 0.0)  # a repeated slot (two labels in one bar) is no gap
    return gap, off


def calendar_bars_per_year(ts_ns: np.ndarray, name: str, freq: Frequency) -> float:
    """Sessions per year × bars per session of the calendar (early closes and holidays included), averaged
    over the whole calendar years the data touches: a property of the market, not of the data's span."""
    first, last = _span_dates(np.asarray(ts_ns, dtype=np.int64))
    years = range(first.year, last.year + 1)
    grid = _grid(name, pd.Timestamp(years[0], 1, 1), pd.Timestamp(years[-1], 12, 31), freq)
    count = len(grid.days) if freq.day_based else len(grid.starts)
    if count == 0:
        raise DataError(f"data.calendar {name!r} has no sessions in {years[0]}..{years[-1]}")
    return count / len(years)


def session_bar_starts(
    name: str, first: pd.Timestamp, num_bars: int, step: pd.Timedelta
) -> tuple[pd.DatetimeIndex, int]:
    """The first ``num_bars`` bar starts of calendar ``name`` from date ``first`` (bars of ``step``; a day
    step: one bar per session, at its open) and the modal number of bars per session; for laying a
    synthetic market on an exchange's sessions."""
    day = step >= pd.Timedelta(days=1)
    sessions = num_bars if day else -(-num_bars // max(1, int(pd.Timedelta(hours=6.5) / step)))
    last = first + pd.Timedelta(days=int(sessions * 1.6) + 30)  # enough calendar days for the sessions
    cal = _calendar(name, first.normalize(), last.normalize())
    lo, hi = max(first.normalize(), cal.first_session), min(last.normalize(), cal.last_session)
    with _quiet_pandas():
        if day:
            stamps = pd.DatetimeIndex(cal.schedule.loc[lo:hi, "open"])
        else:
            stamps = cal.trading_index(lo, hi, period=step, intervals=True, force=True).left
    if len(stamps) < num_bars:
        raise ConfigError(f"data.calendar {name!r}: fewer than {num_bars} bars from {first.date()}")
    stamps = pd.DatetimeIndex(stamps[:num_bars], name=None).tz_convert("UTC").as_unit("ns")
    _, per_session = np.unique(stamps.tz_convert(cal.tz).normalize(), return_counts=True)
    values, counts = np.unique(per_session, return_counts=True)
    return stamps, int(values[np.argmax(counts)])
