"""Latency of one full ``hmarl act`` decision: from the newest bar's normalized feature windows, the three SL
classifiers, the encoder, the master (with the symbol agents' intents) and 143 symbol agents, down to the
orders (:func:`hmarl.act.decide`, which also builds the one-account simulator that applies masks and the
directive). CPU (CUDA when present is not used: a desk's decision is one bar, one account).

    .venv/bin/python bench/act_latency.py [--quick] [--threads N] [--profile full]

Models have the sizes of the profile's params (default ``full``: the seed's SL models, the 4-branch encoder
with 256-d embeddings, trunk 256 / heads 128 symbol agents, the 256 -> 128 -> 48 master) and random weights
(latency does not depend on them); the market is a random 143-symbol store (tests/env_fixtures.make_store).
Reports p50 / p99 over the timed decisions after warm-up. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
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
from hmarl.encoders.model import SharedEncoder  # noqa: E402
from hmarl.env.actions import grid_size  # noqa: E402
from hmarl.env.market import MarketData  # noqa: E402
from hmarl.learners.master_trainer import build_master  # noqa: E402
from hmarl.sl.models import MODEL_NAMES, build_model  # noqa: E402

SYMBOLS, BARS, FEATURES = 143, 120, 23
GOAL_P99_MS = 10.0


def full_bundle(profile: str) -> tuple[Bundle, LatestInputs]:
    cfg = load_config(ROOT / "params.yaml", [f"profile={profile}", "device=cpu"])
    w = cfg.features.window
    store = make_store(num_bars=BARS, num_symbols=SYMBOLS, num_features=FEATURES, seed=0)
    market = MarketData.from_store(store, cfg.env)
    regime = market.regime.shape[1]
    sl = [(build_model(n, getattr(cfg.sl, n), w, FEATURES).eval(), 1.0) for n in MODEL_NAMES]
    encoder = SharedEncoder(cfg.encoder, w, FEATURES, torch.zeros(SYMBOLS, SYMBOLS)).eval()
    agent = SymbolAgent(
        cfg.agent,
        num_symbols=SYMBOLS,
        market_dim=encoder.embed_dim,
        env_dim=env_width(regime),
        counts_scale=float(cfg.env.diversity_window),
    ).eval()
    master = build_master(cfg, SYMBOLS, regime, grid_size(cfg.env)).eval()
    names = [f"f{i}" for i in range(FEATURES)]
    bundle = Bundle(
        cfg, store.symbols, names, [], 0, np.zeros(FEATURES), np.ones(FEATURES), sl, encoder, agent, master
    )
    windows = torch.randn(SYMBOLS, w, FEATURES)
    return bundle, LatestInputs(windows, market, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer decisions (< 1 minute)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the CI box)")
    ap.add_argument("--profile", default="full")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle, inputs = full_bundle(args.profile)
    warmup, n = (5, 50) if args.quick else (20, 500)
    for _ in range(warmup):
        decide(bundle, inputs)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        decide(bundle, inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = (float(np.percentile(times, q)) for q in (50, 99))
    print(
        f"act decision: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {n} decisions (goal p99 <= {GOAL_P99_MS} ms)"
    )
    result = {
        "bench": "act_latency",
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "symbols": SYMBOLS,
        "decisions": n,
        "threads": args.threads,
        "profile": args.profile,
        "device": "cpu",
        "goal_p99_ms": GOAL_P99_MS,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
