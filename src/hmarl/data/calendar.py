"""Bar frequency inference and the calendar's own statistics (bars per day / per year).

Sessions are trading dates: the local date of a bar in ``data.session_tz`` (America/New_York by
default, which maps both 13:30 and 14:30 UTC daily labels of US stocks to the right day); a series
stamped entirely at midnight UTC carries date-only labels and keeps its UTC dates.

* The bar is the modal delta between consecutive bars of a symbol. A modal delta of 20 h or more means
  day-based bars (``"1D"``; DST moves daily labels by an hour, so day-based deltas are not checked to the
  second); shorter means intraday bars (``"1h"``, ``"5min"``, ...).
* Consistency: intraday, a delta smaller than the bar, or one inside a session that is not a multiple of
  it, is an error; day-based, two bars of a symbol on one trading date are an error.
* ``bars_per_year`` comes from the data's own calendar: bar intervals per year of its span
  (``(num_bars - 1) / years(end - start)``), never a hard-coded 252.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from hmarl.config import ConfigError
from hmarl.data.readers import Panel, to_datetime_index
from hmarl.errors import DataError

NS = 1_000_000_000
DAY_NS = 86_400 * NS
YEAR_NS = 365.25 * DAY_NS
_DAY_BASED_MIN_NS = 20 * 3600 * NS


@dataclass(frozen=True)
class Frequency:
    freq: str  # "1D", "1h", "5min", "30s"
    bar_seconds: int
    day_based: bool


def check_tz(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"data.session_tz: unknown time zone {tz!r}") from None
    return tz


def session_days(ts_ns: np.ndarray, tz: str) -> np.ndarray:
    """Trading date of each bar as an int day number: the local date in ``tz``, except that a series
    stamped entirely at 00:00 UTC holds date-only labels, whose date is the UTC date."""
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if len(ts_ns) and not (ts_ns % DAY_NS).any():
        return ts_ns // DAY_NS
    local = to_datetime_index(ts_ns).tz_convert(check_tz(tz)).tz_localize(None)
    return local.asi8 // DAY_NS


def freq_label(bar_ns: int) -> Frequency:
    if bar_ns >= _DAY_BASED_MIN_NS:
        days = max(1, round(bar_ns / DAY_NS))
        return Frequency(f"{days}D", days * 86_400, True)
    if bar_ns % NS:
        raise DataError(f"inferred bar of {bar_ns} ns: bars shorter than whole seconds are not supported")
    sec = bar_ns // NS
    label = f"{sec // 3600}h" if sec % 3600 == 0 else f"{sec // 60}min" if sec % 60 == 0 else f"{sec}s"
    return Frequency(label, int(sec), False)


def _stamp(ts: int) -> str:
    return to_datetime_index(np.array([ts]))[0].isoformat()


def infer_frequency(panel: Panel, tz: str) -> Frequency:
    """The panel's bar frequency; inconsistent spacing is a DataError naming symbol and timestamp."""
    same = panel.codes[1:] == panel.codes[:-1]
    delta = np.diff(panel.ts)
    within = delta[same]
    if within.size == 0:
        raise DataError("cannot infer the bar frequency: no symbol has two bars")
    values, counts = np.unique(within, return_counts=True)
    freq = freq_label(int(values[np.argmax(counts)]))
    uniq, inverse = np.unique(panel.ts, return_inverse=True)
    day = session_days(uniq, tz)[inverse]
    same_day = same & (day[1:] == day[:-1])
    if freq.day_based:
        bad = same & (day[1:] - day[:-1] < max(1, round(freq.bar_seconds / 86_400) - 2))
        why = "fall on the same trading date (or closer than the bar)"
    else:
        bar = freq.bar_seconds * NS
        too_close = same & (delta < bar)
        off_grid = same_day & (delta % bar != 0)
        bad = too_close | off_grid
        why = f"are closer than, or within a session not a multiple of, the {freq.freq} bar"
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"inconsistent bar frequency (inferred {freq.freq}): symbol {panel.symbols[panel.codes[i]]!r} has "
            f"bars at {_stamp(panel.ts[i])} and {_stamp(panel.ts[i + 1])} that {why}"
        )
    return freq


def check_calendar(calendar: np.ndarray, freq: Frequency, tz: str) -> None:
    """Day-based calendars need one bar per trading date (symbols labelled at different times fail)."""
    if not freq.day_based or len(calendar) < 2:
        return
    day = session_days(calendar, tz)
    clash = day[1:] == day[:-1]
    if clash.any():
        i = int(np.argmax(clash))
        raise DataError(
            f"calendar has two {freq.freq} bars on one trading date: {_stamp(calendar[i])} and "
            f"{_stamp(calendar[i + 1])} (symbols label their bars at different times of day)"
        )


def calendar_stats(calendar: np.ndarray, freq: Frequency, tz: str) -> dict:
    """freq, bar_seconds, bars_per_day, bars_per_year, num_bars, start, end of a sorted calendar."""
    n = len(calendar)
    if n < 2:
        raise DataError(f"the calendar has {n} bar(s); at least 2 are needed")
    if freq.day_based:
        per_day = 1
    else:
        _, per_session = np.unique(session_days(calendar, tz), return_counts=True)
        values, counts = np.unique(per_session, return_counts=True)
        per_day = int(values[np.argmax(counts)])
    span_years = (int(calendar[-1]) - int(calendar[0])) / YEAR_NS
    return {
        "freq": freq.freq,
        "bar_seconds": freq.bar_seconds,
        "bars_per_day": per_day,
        "bars_per_year": (n - 1) / span_years,
        "num_bars": n,
        "start": _stamp(calendar[0]),
        "end": _stamp(calendar[-1]),
    }
