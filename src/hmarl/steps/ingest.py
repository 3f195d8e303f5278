"""Ingest raw bars (synthetic market or files) into the canonical dataset: universe, calendar, benchmark.

Synthetic or file bars -> schema checks -> bar frequency -> universe (explicit list or top-N by median
dollar volume) -> common calendar + gap rule -> benchmark and exogenous series on that calendar ->
``outputs["canonical"]`` (see :mod:`hmarl.data.canonical` for the contract).

With ``data.calendar`` (an exchange calendar) the annualization is the calendar's bars per year; the
validate step counts gaps against it (meta ``calendar``). File data without ``data.benchmark_path`` has no
benchmark: none is made up (meta ``benchmark: null``, no benchmark.parquet); later steps skip what is
relative to it or use the universe's own equal-weight index, and say so.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from hmarl.config import ConfigError, HmarlConfig
from hmarl.data.benchmark import align_benchmark, read_benchmark
from hmarl.data.calendar import Frequency, calendar_stats, check_calendar, check_tz, infer_frequency
from hmarl.data.canonical import write_canonical
from hmarl.data.exchange import calendar_bars_per_year, check_calendar_name
from hmarl.data.exogenous import align_exogenous, read_exogenous
from hmarl.data.readers import Panel, build_panel, raw_bars, read_bars
from hmarl.data.synthetic import generate
from hmarl.data.universe import apply_gap_rule, bar_grid, grid_frame, pick_symbols, top_n

INPUTS: dict[str, str] = {}
OUTPUTS = {"canonical": "data/canonical"}
PARAMS = ("seed", "data", "synthetic", "universe")


def load_source(cfg: HmarlConfig) -> tuple[Panel, pd.DataFrame | None, dict]:
    """Raw bars as a panel, the source's own benchmark (synthetic only) and a description of the source."""
    data = cfg.data
    if data.source == "synthetic":
        bars, benchmark = generate(cfg.synthetic, data.benchmark_symbol, data.calendar)
        panel = build_panel([(raw_bars(bars, "synthetic market"), "synthetic market")])
        syn = cfg.synthetic
        source = {
            "kind": "synthetic",
            "mode": syn.mode,
            "seed": syn.seed,
            "params": syn.model_dump(mode="json"),
        }
        return panel, benchmark, source
    panel, files = read_bars(data.path, data.layout)
    return (
        panel,
        None,
        {"kind": "path", "path": data.path, "layout": data.layout, "files": [str(f) for f in files]},
    )


def make_benchmark(
    cfg: HmarlConfig, own: pd.DataFrame | None, calendar: np.ndarray, freq: Frequency
) -> tuple[pd.DataFrame | None, dict]:
    """The benchmark on the calendar: a file, the synthetic market's index, or none (never made up)."""
    data = cfg.data
    if data.benchmark_path:
        frame, symbol = read_benchmark(data.benchmark_path, data.benchmark_symbol)
        info = {"benchmark_symbol": symbol, "benchmark_source": "file", "benchmark_path": data.benchmark_path}
    elif own is not None:
        frame = own.drop(columns="symbol")
        info = {"benchmark_symbol": data.benchmark_symbol, "benchmark_source": "synthetic_equal_weight"}
    else:
        return None, {"benchmark": None, "benchmark_symbol": None, "benchmark_source": "none"}
    aligned, filled = align_benchmark(
        frame, calendar, freq, data.session_tz, data.max_fill_bars, f"benchmark {info['benchmark_symbol']}"
    )
    return aligned, {"benchmark": info["benchmark_symbol"], **info, "benchmark_filled_bars": filled}


def calendar_meta(cfg: HmarlConfig, calendar: np.ndarray, freq: Frequency, tz: str) -> dict:
    """Frequency and calendar statistics; with ``data.calendar`` the calendar's own bars per year."""
    stats = {**calendar_stats(calendar, freq, tz), "calendar": cfg.data.calendar, "session_tz": tz}
    if cfg.data.calendar is not None:
        stats["bars_per_year"] = calendar_bars_per_year(calendar, cfg.data.calendar, freq)
    return stats


def run(cfg: HmarlConfig, inputs: dict, outputs: dict) -> dict[str, float]:
    t0 = time.perf_counter()
    data, universe = cfg.data, cfg.universe
    tz = check_tz(data.session_tz)
    check_calendar_name(data.calendar)
    if data.symbols is not None and not data.symbols:
        raise ConfigError("data.symbols: empty list (use null for top-N selection)")
    panel, own_benchmark, source = load_source(cfg)
    candidates = len(panel.symbols)
    if data.symbols is not None:
        panel = pick_symbols(panel, data.symbols)
        selection = {"method": "explicit", "candidates": candidates}
    freq = infer_frequency(panel, tz)
    if data.symbols is None:
        panel, selection = top_n(panel, universe)
    panel, calendar, dropped = apply_gap_rule(panel, universe)
    check_calendar(calendar, freq, tz)
    grid, tradable = bar_grid(panel, calendar)
    bars = grid_frame(panel.symbols, calendar, grid, tradable)
    benchmark, bench_info = make_benchmark(cfg, own_benchmark, calendar, freq)
    exo_frames = [read_exogenous(src) for src in data.exogenous]
    exogenous, exo_filled = (
        align_exogenous(exo_frames, calendar, data.exogenous, data.max_fill_bars)
        if exo_frames
        else (None, {})
    )
    masked = int((~tradable).sum())
    meta = {
        "symbols": panel.symbols,
        "num_symbols": len(panel.symbols),
        "dropped_symbols": dropped,
        "selection": selection,
        **calendar_meta(cfg, calendar, freq, tz),
        "source": source,
        "gap_rule": universe.gap_rule,
        "max_missing_fraction": universe.max_missing_fraction,
        "masked_bars": masked,
        **bench_info,
        "exogenous": [src.model_dump(mode="json") for src in data.exogenous],
        "max_fill_bars": data.max_fill_bars,
        "exogenous_filled_bars": exo_filled,
    }
    meta = write_canonical(outputs["canonical"], bars, benchmark, exogenous, meta)
    return {
        "symbols": float(meta["num_symbols"]),
        "candidates": float(candidates),
        "bars": float(meta["num_bars"]),
        "rows": float(len(bars)),
        "dropped_symbols": float(len(dropped)),
        "masked_bars": float(masked),
        "bars_per_year": float(meta["bars_per_year"]),
        "bar_seconds": float(meta["bar_seconds"]),
        "benchmark_filled_bars": float(bench_info.get("benchmark_filled_bars", 0)),
        "exogenous_filled_bars": float(sum(exo_filled.values())),
        "seconds": time.perf_counter() - t0,
    }
