"""The value rules of the canonical dataset's suite: one Great Expectations expectation each, plus the words
that explain its failures (run by :mod:`hmarl.data.ge_suite`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pandas as pd

from hmarl.config import ValidationConfig
from hmarl.data.expectation_tables import PRICES, exogenous_columns

MASKED_TOLERANCE = 1e-9  # relative: a masked bar repeats the previous close exactly
# column -> dtype kind (see expectations._dtype_ok); dict order is the report's order
BARS_SCHEMA = {
    "symbol": "string",
    "timestamp": "utc_datetime",
    **dict.fromkeys((*PRICES, "volume"), "float64"),
    "tradable": "bool",
}
BENCHMARK_SCHEMA = {"timestamp": "utc_datetime", "close": "float64"}
BENCHMARK_OPTIONAL = dict.fromkeys(("open", "high", "low", "volume"), "float64")


@dataclass(frozen=True)
class Rule:
    """A value rule: one GE expectation plus the words that explain its failures."""

    name: str
    table: str  # key of TABLES
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict
    target: str
    description: str
    problem: str  # follows the count: "3 rows" + " with close <= 0"
    show: tuple[str, ...] = ()  # columns printed with each example besides the table keys

    @property
    def check_id(self) -> str:
        return f"{self.name} ({self.target})" if self.target else self.name


def _price_rules(table: str, columns: list[str], prefix: str) -> list[Rule]:
    """Non-null, positive prices, high/low bracketing open/close, volume >= 0 (for present columns)."""
    rules = [
        Rule(f"{prefix}not_null", table, "ExpectColumnValuesToNotBeNull", {"column": c}, c,
             f"{c} has no missing values", f"with {c} null", (c,))
        for c in columns
    ]  # fmt: skip
    rules += [
        Rule(f"{prefix}prices_positive", table, "ExpectColumnValuesToBeBetween",  # +inf fails the max
             {"column": c, "min_value": 0, "strict_min": True, "max_value": sys.float_info.max}, c,
             f"{c} > 0 and finite", f"with {c} <= 0 or infinite", (c,))
        for c in PRICES if c in columns
    ]  # fmt: skip
    pair = {"or_equal": True, "ignore_row_if": "either_value_is_missing"}
    for c in ("open", "close"):
        if "high" in columns and c in columns:
            rules.append(Rule(f"{prefix}high_is_max", table, "ExpectColumnPairValuesAToBeGreaterThanB",
                              {"column_A": "_high_slack", "column_B": c, **pair}, f"high >= {c}",
                              f"high >= {c}", f"with high < {c}", ("high", c)))  # fmt: skip
    for c in ("open", "close"):
        if "low" in columns and c in columns:
            rules.append(Rule(f"{prefix}low_is_min", table, "ExpectColumnPairValuesAToBeGreaterThanB",
                              {"column_A": c, "column_B": "_low_slack", **pair}, f"low <= {c}",
                              f"low <= {c}", f"with low > {c}", ("low", c)))  # fmt: skip
    if "volume" in columns:
        rules.append(Rule(f"{prefix}volume_non_negative", table, "ExpectColumnValuesToBeBetween",
                          {"column": "volume", "min_value": 0, "max_value": sys.float_info.max}, "volume",
                          "volume >= 0 and finite", "with volume < 0 or infinite",
                          ("volume",)))  # fmt: skip
    return rules


def _series_rules(table: str, frame: pd.DataFrame) -> list[Rule]:
    """Benchmark / exogenous: one row per timestamp, every timestamp on the bars calendar."""
    rules = [Rule(f"{table}_unique_timestamps", table, "ExpectColumnValuesToBeUnique",
                  {"column": "timestamp"}, "timestamp", f"one {table} row per timestamp",
                  "sharing their timestamp with another row")]  # fmt: skip
    if "_on_calendar" in frame.columns:
        rules.append(Rule(f"{table}_on_calendar", table, "ExpectColumnValuesToBeInSet",
                          {"column": "_on_calendar", "value_set": [True]}, "timestamp",
                          f"every {table} timestamp is a bars.parquet timestamp",
                          "whose timestamp is not on the bars calendar"))  # fmt: skip
    return rules


def _bad_print_rules(cfg: ValidationConfig) -> list[Rule]:
    w, r = cfg.bad_print_window, cfg.bad_print_reversion
    rules = []
    for name, column, prices, k in (
        ("bad_prints", "_print_score", "open/close", cfg.bad_print_sigmas),
        ("bad_prints_high_low", "_extreme_score", "high/low", cfg.bad_print_sigmas_high_low),
    ):
        description = (
            f"no {prices} leaves the symbol's range and comes straight back: a move out of close[t-1] and "
            f"back to close[t+1] both larger than {k:g} robust sigmas (1.4826 x median |log return| of the "
            f"symbol's previous {w} bars), the way back giving back at least {r:.0%} of the way out, is a "
            "bad print (thresholds: validation.bad_print_*; genuine events: validation.allow_bad_prints)"
        )
        rules.append(Rule(name, "bars", "ExpectColumnValuesToBeBetween", {"column": column, "max_value": k},
                          f"reverting {prices} move <= {k:g} sigma", description,
                          f"whose {prices} went out and came back by more than {k:g} sigmas (bad prints)",
                          ("open", "high", "low", "close", "_prev_close", "_next_close", column)))  # fmt: skip
    return rules


def _bars_rules(cfg: ValidationConfig) -> list[Rule]:
    m, f, n = cfg.max_abs_return, cfg.max_outlier_fraction, cfg.min_bars_per_symbol
    rules = [Rule("bars_not_empty", "bars", "ExpectTableRowCountToBeBetween", {"min_value": 1}, "",
                  "bars.parquet has at least one row", "bars.parquet has {observed} rows")]  # fmt: skip
    rules += _price_rules("bars", list(BARS_SCHEMA), "")
    rules += [
        Rule("unique_bars", "bars", "ExpectCompoundColumnsToBeUnique",
             {"column_list": ["symbol", "timestamp"]}, "symbol, timestamp",
             "one row per (symbol, timestamp)", "sharing their (symbol, timestamp) with another row"),
        Rule("symbols_sorted", "bars", "ExpectColumnValuesToBeBetween",
             {"column": "_symbol_step", "min_value": 0}, "symbol",
             "rows come in one block per symbol, blocks sorted by symbol",
             "whose symbol sorts before the previous row's", ("_prev_symbol",)),
        Rule("timestamps_sorted", "bars", "ExpectColumnValuesToBeBetween",
             {"column": "_ts_step", "min_value": 0}, "timestamp",
             "timestamps increase within each symbol", "earlier than the previous row of the same symbol",
             ("_prev_timestamp",)),
        Rule("masked_bars_flat", "bars", "ExpectColumnValuesToBeBetween",
             {"column": "_masked_dev", "max_value": MASKED_TOLERANCE}, "tradable=False",
             "masked bars repeat the previous close with volume 0",
             "masked (tradable=False) but not flat at the previous close with volume 0",
             ("open", "high", "low", "close", "volume", "_prev_close")),
        Rule("return_outliers", "bars", "ExpectColumnValuesToBeBetween",
             {"column": "_return", "min_value": -m, "max_value": m, "mostly": 1.0 - f},
             f"|return| <= {m}",
             f"close-to-close returns beyond +-{m} are listed; more than a {f:g} fraction fails",
             f"with |close-to-close return| > {m}", ("close", "_prev_close", "_return")),
        *_bad_print_rules(cfg),
        Rule("bars_per_symbol_min", "symbols", "ExpectColumnValuesToBeBetween",
             {"column": "bars", "min_value": n}, "bars", f"every symbol has at least {n} bars",
             f"with fewer than {n} bars", ("bars",)),
        Rule("common_calendar", "symbols", "ExpectColumnPairValuesToBeEqual",
             {"column_A": "bars", "column_B": "calendar_bars"}, "bars == calendar_bars",
             "every symbol has a bar on every calendar timestamp", "missing calendar timestamps",
             ("bars", "calendar_bars", "first_missing")),
    ]  # fmt: skip
    return rules


def _calendar_rules(cfg: ValidationConfig, calendar: pd.DataFrame, name: str | None) -> list[Rule]:
    rules = []
    against = f"the {name} exchange calendar (holidays and early closes are no gaps)" if name else (
        "the data's own calendar (set data.calendar, e.g. XNYS, so exchange holidays are no gaps)")  # fmt: skip
    if "_gap_bars" in calendar.columns:
        g = cfg.max_calendar_gap_bars
        rules.append(Rule("calendar_gaps", "calendar", "ExpectColumnValuesToBeBetween",
                          {"column": "_gap_bars", "max_value": g}, f"gap <= {g} bars",
                          f"at most {g} expected bars missing between calendar timestamps, against {against}",
                          f"with more than {g} expected bars missing before them (against {against})",
                          ("_previous", "_gap_bars")))  # fmt: skip
    if "_off_session" in calendar.columns:
        rules.append(Rule("calendar_sessions", "calendar", "ExpectColumnValuesToBeInSet",
                          {"column": "_off_session", "value_set": [False]}, "timestamp",
                          f"every bar lies in a session of the {name} calendar",
                          f"outside every {name} session (extended hours, a holiday, or another "
                          "data.calendar?)"))  # fmt: skip
    if "_in_benchmark" in calendar.columns:
        rules.append(Rule("benchmark_covers_calendar", "calendar", "ExpectColumnValuesToBeInSet",
                          {"column": "_in_benchmark", "value_set": [True]}, "timestamp",
                          "benchmark.parquet has every bars timestamp",
                          "missing from benchmark.parquet"))  # fmt: skip
    return rules


def build_rules(
    cfg: ValidationConfig, tables: dict[str, pd.DataFrame], calendar_name: str | None
) -> list[Rule]:
    """The suite for the frames at hand (a frame whose schema failed has no rules)."""
    rules = _bars_rules(cfg) if "bars" in tables else []
    rules += _calendar_rules(cfg, tables.get("calendar", pd.DataFrame()), calendar_name)
    if "benchmark" in tables:
        bench = tables["benchmark"]
        present = [c for c in (*BENCHMARK_SCHEMA, *BENCHMARK_OPTIONAL) if c in bench.columns]
        rules += _price_rules("benchmark", present, "benchmark_") + _series_rules("benchmark", bench)
    if "exogenous" in tables:
        rules += _series_rules("exogenous", tables["exogenous"])
        for c in exogenous_columns(tables["exogenous"]):
            rules += [
                Rule("exogenous_finite", "exogenous", "ExpectColumnValuesToBeBetween",
                     {"column": c, "min_value": -sys.float_info.max, "max_value": sys.float_info.max}, c,
                     f"{c} has no +-inf", f"with {c} = +-inf", (c,)),
                Rule("exogenous_no_late_nan", "exogenous", "ExpectColumnValuesToNotBeNull",
                     {"column": f"_started__{c}"}, c, f"{c} is NaN only before its first value",
                     f"with {c} NaN after its first value", (c,)),
            ]  # fmt: skip
    return rules
