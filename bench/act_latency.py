"""Latency of one full ``hmarl act`` decision in a desk's steady state: a new bar arrives, its normalized
feature windows are ready, and the warm :class:`hmarl.serve.decider.Decider` completes the SL classifiers and the
encoder from the prefix it prepared between bars, runs the symbol agents (their intents feed the master), the
master and the 143 symbol agents under its directive, down to the orders. CPU (a desk's decision is one bar,
one account: CUDA is not used).

    .venv/bin/python bench/act_latency.py [--quick] [--threads 2] [--gap-ms 20] [--profile full] [--set K=V]

Models have the sizes of the profile's params (default ``full``: the seed's SL models, the 4-branch encoder
with 256-d embeddings, trunk 256 / heads 128 symbol agents with int8 head weights as ``agent.head_weights``
says, the 256 -> 128 -> 48 master; ``--set`` overrides a key, e.g. ``--set agent.head_weights=float32``) and
random weights (latency does not depend on them); the market
is a random 143-symbol store (tests/env_fixtures.make_store) whose bars arrive one after the other. A desk's
loop per bar: decide (timed), ``prepare`` the next bar's prefix (untimed: between bars). Reports p50 / p99 of
decisions back to back (the headline), the same with ``--gap-ms`` of idle time between bars (caches and
thread pools cool down), the cold start (a bar whose prefix was not prepared), a decision plus the next
prefix, the first call (construction + first decision) and, in the same process as the baseline, the
reference computation :func:`hmarl.serve.decision.decide` (everything rebuilt per decision). The last line printed is
one JSON object.
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
from hmarl.agents.inputs import env_width  # noqa: E402
from hmarl.agents.int8_heads import quantize_heads_  # noqa: E402
from hmarl.agents.symbol import SymbolAgent  # noqa: E402
from hmarl.config import load_config  # noqa: E402
from hmarl.encoders.model import SharedEncoder  # noqa: E402
from hmarl.env.actions import grid_size  # noqa: E402
from hmarl.env.market import MarketData  # noqa: E402
from hmarl.learners.master_trainer import build_master  # noqa: E402
from hmarl.runtime import set_threads  # noqa: E402
from hmarl.serve.bundle import Bundle  # noqa: E402
from hmarl.serve.decider import Decider  # noqa: E402
from hmarl.serve.decision import decide  # noqa: E402
from hmarl.serve.inputs import LatestInputs  # noqa: E402
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
    if cfg.agent.head_weights == "int8":  # as symbol training leaves them
        quantize_heads_(agent)
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


def desk(decider: Decider, inputs: list[LatestInputs], n: int, gap_ms: float) -> dict[str, list[float]]:
    """A desk's loop over ``n`` bars: prepare the next bar's prefix and idle ``gap_ms`` (untimed: between
    bars), decide (timed). Decisions by kind: ``master`` (the master acts: one full decision; ``changed``
    lists those where it set a new directive, the agents then run again under it), ``held`` (the directive
    holds: the symbol agents only), ``cold`` (bar 0 after bar ``BARS - 1`` when the sequence starts over:
    neither its prefix nor the master's bar is in the history, a full decision from scratch)."""
    interval = decider.cfg.env.master.interval
    kinds: dict[str, list[float]] = {"master": [], "changed": [], "held": [], "cold": []}
    for i in range(n):
        x = inputs[i % len(inputs)]
        decider.prepare()
        time.sleep(gap_ms / 1e3)
        hold = decider.hold_for(x.market)
        kind = "cold" if not i % len(inputs) else "held" if hold and hold.elapsed < interval else "master"
        t0 = time.perf_counter()
        orders = decider.decide(x)
        kinds[kind].append((time.perf_counter() - t0) * 1e3)
        if kind == "master" and orders[0]["directive"]["index"] != hold.directive:
            kinds["changed"].append(kinds[kind][-1])
    return kinds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer decisions (< 1 minute)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: the CI box)")
    ap.add_argument("--gap-ms", type=float, default=20.0, help="idle time between bars of the idle-gap run")
    ap.add_argument("--profile", default="full")
    ap.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cuda / auto with a GPU: also time the reference decision on the GPU (the desk path is CPU)",
    )
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeat)"
    )
    args = ap.parse_args()
    set_threads(args.threads)
    bundle, inputs = full_bundle(args.profile, overrides=tuple(args.set))
    warmup, n, n_gap, n_ref = (24, 480, 96, 10) if args.quick else (48, 2400, 480, 40)
    load = os.getloadavg()[0]

    t0 = time.perf_counter()
    decider = Decider(bundle, threads=args.threads)
    decider.decide(inputs[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    desk(decider, inputs, warmup, 0.0)
    bars = desk(decider, inputs, n, 0.0)
    p50, p99, fastest = percentiles(bars["master"])
    held50, held99, _ = percentiles(bars["held"])
    changed = percentiles(bars["changed"]) if bars["changed"] else (None, None, None)
    gap50, gap99, _ = percentiles(desk(decider, inputs, n_gap, args.gap_ms)["master"])
    both = timed(lambda x: (decider.decide(x), decider.prepare()), inputs, n_ref)
    ref50, ref99, _ = percentiles(timed(lambda x: decide(bundle, x), inputs, n_ref))
    cuda50 = cuda99 = None
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        gpu_bundle = full_bundle(args.profile, bars=1, overrides=tuple(args.set))[0].to("cuda")
        timed(lambda x: decide(gpu_bundle, x), inputs, 5)  # kernels loaded, allocator warm
        cuda50, cuda99, _ = percentiles(timed(lambda x: decide(gpu_bundle, x), inputs, n_ref))
    result = {
        "bench": "act_latency",
        "p50_ms": p50,
        "p99_ms": p99,
        "symbols": SYMBOLS,
        "min_ms": fastest,
        "master_bars": len(bars["master"]),
        "directive_changed_bars": len(bars["changed"]),
        "directive_changed_p50_ms": changed[0],
        "directive_changed_p99_ms": changed[1],
        "held_bar_p50_ms": held50,
        "held_bar_p99_ms": held99,
        "all_bars_p99_ms": percentiles(bars["master"] + bars["held"])[1],
        "idle_gap_p50_ms": gap50,
        "idle_gap_p99_ms": gap99,
        "idle_gap_ms": args.gap_ms,
        "cold_start_p50_ms": percentiles(bars["cold"])[0],
        "decide_and_prepare_p50_ms": percentiles(both)[0],
        "first_call_ms": round(first_ms, 1),
        "reference_p50_ms": ref50,
        "reference_p99_ms": ref99,
        "threads": args.threads,
        "profile": args.profile,
        "overrides": args.set,
        "device": "cpu" if cuda50 is None else "cpu+cuda",
        "cuda_reference_p50_ms": cuda50,  # None without a GPU
        "cuda_reference_p99_ms": cuda99,
        "cpus": os.cpu_count(),
        "load_average": round(load, 2),
        "goal_p99_ms": GOAL_P99_MS,
    }
    print(
        f"act decision (master bars: one full decision), {len(bars['master'])} of {n} consecutive bars back to "
        f"back: p50 {p50:.2f} ms, p99 {p99:.2f} ms, min {fastest:.2f} ms (goal p99 <= {GOAL_P99_MS} ms); "
        f"bars where the directive holds: p50 {held50:.2f} ms, p99 {held99:.2f} ms; master bars "
        f"{args.gap_ms:g} ms apart: p50 {gap50:.2f} ms, p99 {gap99:.2f} ms; cold start p50 "
        f"{result['cold_start_p50_ms']:.2f} ms; decision + next prefix p50 {result['decide_and_prepare_p50_ms']:.2f} "
        f"ms; first call {first_ms:.1f} ms; reference computation p50 {ref50:.2f} ms, p99 {ref99:.2f} ms over "
        f"{n_ref}; load average {load:.2f} on {os.cpu_count()} CPUs"
        + ("" if cuda50 is None else f"; reference on CUDA p50 {cuda50:.2f} ms, p99 {cuda99:.2f} ms")
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
