"""Latency of one full ``hmarl act`` decision in a desk's steady state: a new bar arrives, its normalized
feature windows are ready, and the warm :class:`hmarl.decider.Decider` runs the three SL classifiers, the
encoder, the symbol agents (their intents feed the master), the master and the 143 symbol agents under its
directive, down to the orders. CPU (a desk's decision is one bar, one account: CUDA is not used).

    .venv/bin/python bench/act_latency.py [--quick] [--workers 2] [--threads N] [--profile full]

Models have the sizes of the profile's params (default ``full``: the seed's SL models, the 4-branch encoder
with 256-d embeddings, trunk 256 / heads 128 symbol agents, the 256 -> 128 -> 48 master) and random weights
(latency does not depend on them); the market is a random 143-symbol store (tests/env_fixtures.make_store)
whose bars arrive one after the other. Reports p50 / p99 over the timed decisions after warm-up, the first
call (Decider construction + its first decision) separately, and, in the same process as the baseline, the
reference computation :func:`hmarl.act.decide` (everything rebuilt per decision, as before the Decider).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from env_fixtures import make_store  # noqa: E402
from hmarl.act import Bundle, LatestInputs, decide  # noqa: E402
from hmarl.agents.inputs import env_width  # noqa: E402
from hmarl.agents.symbol import SymbolAgent  # noqa: E402
from hmarl.config import load_config  # noqa: E402
from hmarl.decider import Decider  # noqa: E402
from hmarl.encoders.model import SharedEncoder  # noqa: E402
from hmarl.env.actions import grid_size  # noqa: E402
from hmarl.env.market import MarketData  # noqa: E402
from hmarl.learners.master_trainer import build_master  # noqa: E402
from hmarl.sl.models import MODEL_NAMES, build_model  # noqa: E402

SYMBOLS, FEATURES = 143, 23
BARS = 24  # distinct newest bars the timed decisions cycle through
GOAL_P99_MS = 10.0


def full_bundle(
    profile: str, bars: int = BARS, symbols: int = SYMBOLS, overrides: tuple[str, ...] = ()
) -> tuple[Bundle, list[LatestInputs]]:
    """A bundle with the profile's model sizes, and the act inputs of ``bars`` consecutive newest bars."""
    cfg = load_config(ROOT / "params.yaml", [f"profile={profile}", "device=cpu", *overrides])
    w = cfg.features.window
    history = 80  # bars before the first newest bar (benchmark state looks back 60)
    store = make_store(num_bars=history + bars + 1, num_symbols=symbols, num_features=FEATURES, seed=0)
    market = MarketData.from_store(store, cfg.env)
    regime = market.regime.shape[1]
    g = torch.Generator().manual_seed(0)
    sl = [(build_model(n, getattr(cfg.sl, n), w, FEATURES).eval(), 1.0) for n in MODEL_NAMES]
    adjacency = torch.softmax(torch.randn(symbols, symbols, generator=g), 1)
    encoder = SharedEncoder(cfg.encoder, w, FEATURES, adjacency).eval()
    agent = SymbolAgent(
        cfg.agent,
        num_symbols=symbols,
        market_dim=encoder.embed_dim,
        env_dim=env_width(regime),
        counts_scale=float(cfg.env.diversity_window),
    ).eval()
    master = build_master(cfg, symbols, regime, grid_size(cfg.env)).eval()
    names = [f"f{i}" for i in range(FEATURES)]
    bundle = Bundle(
        cfg,
        store.symbols,
        names,
        list(store.regime_names),
        0,
        np.zeros(FEATURES),
        np.ones(FEATURES),
        sl,
        encoder,
        agent,
        master,
    )
    features = torch.from_numpy(store.features)  # (T, S, F), already standard normal
    inputs = []
    for t in range(history, history + bars):  # newest bar t; bar t + 1 is the act placeholder
        view = MarketData(
            market.table[:, : t + 2],
            market.benchmark[: t + 2],
            market.regime[: t + 2],
            market.bars_per_year,
            market.symbols,
            market.timestamps[: t + 2],
        )
        windows = features[t - w + 1 : t + 1].transpose(0, 1).contiguous()
        inputs.append(LatestInputs(windows, view, None))
    return bundle, inputs


def percentiles(times: list[float]) -> tuple[float, float, float]:
    """p50, p99 and the minimum (what the decision costs when nothing else wants the CPU)."""
    p50, p99 = (float(np.percentile(times, q)) for q in (50, 99))
    return round(p50, 3), round(p99, 3), round(min(times), 3)


def timed(fn, inputs: list[LatestInputs], n: int, between=None) -> list[float]:
    """``n`` calls on the bars in order (cycling); ``between`` runs untimed before each."""
    times = []
    for i in range(n):
        x = inputs[i % len(inputs)]
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def desk(
    decider: Decider, inputs: list[LatestInputs], n: int, gap_ms: float
) -> tuple[list[float], list[float]]:
    """A desk's loop over ``n`` bars: decide, then prepare the next bar's prefix (untimed: between bars),
    idle ``gap_ms``. Returns the decisions of consecutive bars and the cold starts (bar 0 after bar
    ``BARS - 1`` when the sequence starts over: its prefix is not the prepared one)."""
    gap = gap_ms / 1e3
    times = timed(decider.decide, inputs, n, lambda: (decider.prepare(), time.sleep(gap)))
    steady = [t for i, t in enumerate(times) if i % len(inputs)]
    return steady, [t for i, t in enumerate(times) if not i % len(inputs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer decisions (< 1 minute)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: the CI box)")
    ap.add_argument("--gap-ms", type=float, default=20.0, help="idle time between bars of the idle-gap run")
    ap.add_argument("--profile", default="full")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeat)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle, inputs = full_bundle(args.profile, overrides=tuple(args.set))
    warmup, n, n_gap, n_ref = (5, 240, 48, 10) if args.quick else (24, 1200, 240, 40)
    load = os.getloadavg()[0]

    t0 = time.perf_counter()
    decider = Decider(bundle, threads=args.threads)
    decider.decide(inputs[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    desk(decider, inputs, warmup, 0.0)
    steady, cold = desk(decider, inputs, n, 0.0)
    p50, p99, fastest = percentiles(steady)
    gap50, gap99, _ = percentiles(desk(decider, inputs, n_gap, args.gap_ms)[0])
    prefix_ms = timed(lambda x: (decider.decide(x), decider.prepare()), inputs, n_ref)
    ref50, ref99, _ = percentiles(timed(lambda x: decide(bundle, x), inputs, n_ref))
    result = {
        "bench": "act_latency",
        "p50_ms": p50,
        "p99_ms": p99,
        "symbols": SYMBOLS,
        "min_ms": fastest,
        "idle_gap_p50_ms": gap50,
        "idle_gap_p99_ms": gap99,
        "idle_gap_ms": args.gap_ms,
        "cold_start_p50_ms": percentiles(cold)[0],
        "decide_and_prepare_p50_ms": percentiles(prefix_ms)[0],
        "first_call_ms": round(first_ms, 1),
        "reference_p50_ms": ref50,
        "reference_p99_ms": ref99,
        "decisions": len(steady),
        "threads": args.threads,
        "profile": args.profile,
        "overrides": args.set,
        "device": "cpu",
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "goal_p99_ms": GOAL_P99_MS,
    }
    print(
        f"act decision, {len(steady)} consecutive bars back to back: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"min {fastest:.2f} ms (goal p99 <= {GOAL_P99_MS} ms); bars {args.gap_ms:g} ms apart: p50 {gap50:.2f} ms, "
        f"p99 {gap99:.2f} ms; cold start (no prepared prefix) p50 {result['cold_start_p50_ms']:.2f} ms; "
        f"decision + next prefix p50 {result['decide_and_prepare_p50_ms']:.2f} ms; first call {first_ms:.1f} ms; "
        f"reference computation p50 {ref50:.2f} ms, p99 {ref99:.2f} ms over {n_ref}; "
        f"load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
