"""Ingest raw bars (synthetic market or files) into the canonical dataset: universe, calendar, benchmark.

Synthetic or file bars -> schema checks -> bar frequency -> universe (explicit list or top-N by median
dollar volume) -> common calendar + gap rule -> benchmark and exogenous series on that calendar ->
``outputs["canonical"]`` (see :mod:`hmarl.data.canonical` for the contract).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from hmarl.config import ConfigError, HmarlConfig
from hmarl.data.benchmark import align_benchmark, equal_weight_index, read_benchmark
from hmarl.data.calendar import Frequency, calendar_stats, check_calendar, check_tz, infer_frequency
from hmarl.data.canonical import write_canonical
from hmarl.data.exogenous import align_exogenous, read_exogenous
from hmarl.data.readers import Panel, build_panel, raw_bars, read_bars, to_datetime_index
from hmarl.data.synthetic import generate
from hmarl.data.universe import apply_gap_rule, bar_grid, grid_frame, pick_symbols, top_n

INPUTS: dict[str, str] = {}
OUTPUTS = {"canonical": "data/canonical"}
PARAMS = ("seed", "data", "synthetic", "universe")


def load_source(cfg: HmarlConfig) -> tuple[Panel, pd.DataFrame | None, dict]:
    """Raw bars as a panel, the source's own benchmark (synthetic only) and a description of the source."""
    data = cfg.data
    if data.source == "synthetic":
        bars, benchmark = generate(cfg.synthetic, data.benchmark_symbol)
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
    cfg: HmarlConfig,
    own: pd.DataFrame | None,
    grid: dict[str, np.ndarray],
    calendar: np.ndarray,
    freq: Frequency,
) -> tuple[pd.DataFrame, dict]:
    """The benchmark on the calendar: a file, the synthetic market's index, or the universe's index."""
    data = cfg.data
    if data.benchmark_path:
        frame, symbol = read_benchmark(data.benchmark_path, data.benchmark_symbol)
        info = {"benchmark_symbol": symbol, "benchmark_source": "file", "benchmark_path": data.benchmark_path}
    elif own is not None:
        frame = own.drop(columns="symbol")
        info = {"benchmark_symbol": data.benchmark_symbol, "benchmark_source": "synthetic_equal_weight"}
    else:
        index = equal_weight_index({c: v.T for c, v in grid.items()})
        frame = pd.DataFrame({"timestamp": to_datetime_index(calendar), **index})
        info = {"benchmark_symbol": "EQUAL_WEIGHT", "benchmark_source": "equal_weight_universe"}
    aligned, filled = align_benchmark(
        frame, calendar, freq, data.session_tz, f"benchmark {info['benchmark_symbol']}"
    )
    return aligned, {**info, "benchmark_filled_bars": filled}


def run(cfg: HmarlConfig, inputs: dict, outputs: dict) -> dict[str, float]:
    t0 = time.perf_counter()
    data, universe = cfg.data, cfg.universe
    tz = check_tz(data.session_tz)
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
    benchmark, bench_info = make_benchmark(cfg, own_benchmark, grid, calendar, freq)
    exo_frames = [read_exogenous(src) for src in data.exogenous]
    exogenous = align_exogenous(exo_frames, calendar) if exo_frames else None
    masked = int((~tradable).sum())
    meta = {
        "symbols": panel.symbols,
        "num_symbols": len(panel.symbols),
        "dropped_symbols": dropped,
        "selection": selection,
        **calendar_stats(calendar, freq, tz),
        "session_tz": tz,
        "source": source,
        "gap_rule": universe.gap_rule,
        "max_missing_fraction": universe.max_missing_fraction,
        "masked_bars": masked,
        **bench_info,
        "exogenous": [src.model_dump(mode="json") for src in data.exogenous],
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
        "benchmark_filled_bars": float(bench_info["benchmark_filled_bars"]),
        "seconds": time.perf_counter() - t0,
    }
