"""Throughput of the batched market simulator's full step (fills, costs, rewards, masks, anti-collapse,
telemetry) in symbol-steps/s at 64/128/1024 envs x 143 symbols, next to the slow per-symbol reference
implementation (tests/env_reference.py) measured in the same process; also the rollout-memory figure.

    .venv/bin/python bench/env_throughput.py [--quick] [--device cpu|cuda] [--threads N]

Actions are uniform random ids (valid and invalid); the action check is off, as in a trainer's hot loop.
On CPU the default is one intra-op thread: at these tensor sizes a second thread does not pay for its
synchronization, and on a shared 2-core machine it can make every op many times slower.
The headline figures use the default configuration (float64, backend auto: the fused C step on CPU when a
compiler is present); the torch-ops path in float64 and float32 is measured alongside.
Each figure is the best of 5 timed chunks (after a warm-up). The last line printed is one JSON object.
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
from env_reference import ReferenceEnv  # noqa: E402
from hmarl.env.market import MarketData  # noqa: E402
from hmarl.env.params import EnvConfig, RewardConfig  # noqa: E402
from hmarl.env.rollout_memory import rollout_bytes  # noqa: E402
from hmarl.env.vec_env import MarketEnv  # noqa: E402
from hmarl.runtime import set_threads  # noqa: E402

SYMBOLS = 143


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_batched(
    market: MarketData,
    num_envs: int,
    steps: int,
    device: torch.device,
    check: bool = False,
    backend: str = "auto",
) -> float:
    dtype = str(market.table.dtype).removeprefix("torch.")
    cfg = EnvConfig(num_envs=num_envs, episode_length=256, check_actions=check, dtype=dtype, backend=backend)
    env = MarketEnv(market, cfg, RewardConfig(), seed=0)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    pool = [torch.randint(0, 7, (num_envs, SYMBOLS), generator=gen, device=device) for _ in range(16)]
    for i in range(max(20, steps // 5)):  # warm-up
        env.step(pool[i % 16])
    # best of 5 timed chunks: the machine may be shared, the best chunk is the least disturbed
    chunk = max(1, steps // 5)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        for i in range(chunk):
            env.step(pool[i % 16])
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return num_envs * SYMBOLS * chunk / best


def bench_reference(market: MarketData, num_envs: int, steps: int) -> float:
    cfg = EnvConfig(num_envs=num_envs, episode_length=256)
    ref = ReferenceEnv(
        market.table.cpu().numpy(),
        market.benchmark.cpu().numpy(),
        market.bars_per_year,
        cfg,
        RewardConfig(),
        num_envs,
        (0, market.num_bars),
        seed=0,
    )
    ref.reset()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps):
        ref.step(rng.integers(0, 7, size=(num_envs, SYMBOLS)))
    return num_envs * SYMBOLS * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: finishes within a minute")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads on CPU (0: torch default)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    store = make_store(num_bars=2000, num_symbols=SYMBOLS, seed=0)
    market = MarketData.from_store(store, EnvConfig(), device=device)
    market32 = MarketData.from_store(store, EnvConfig(dtype="float32"), device=device)
    steps = {64: 300, 128: 200, 1024: 20} if args.quick else {64: 2000, 128: 1000, 1024: 150}
    backend = MarketEnv(market, EnvConfig(num_envs=1), RewardConfig()).backend
    print(f"device={device} threads={torch.get_num_threads()} dtype={market.table.dtype} backend={backend}")
    figures = {}
    for num_envs, n_steps in steps.items():
        figures[f"{num_envs}x{SYMBOLS}"] = sps = bench_batched(market, num_envs, n_steps, device)
        print(f"batched {num_envs:5d} x {SYMBOLS}: {sps / 1e6:8.2f} M symbol-steps/s  ({n_steps} steps)")
    torch_path, figures32 = {}, {}
    for num_envs, n_steps in steps.items():
        key = f"{num_envs}x{SYMBOLS}"
        torch_path[key] = sps = bench_batched(market, num_envs, n_steps // 2, device, backend="torch")
        print(f"batched {num_envs:5d} x {SYMBOLS}, torch ops, float64: {sps / 1e6:8.2f} M symbol-steps/s")
        figures32[key] = sps = bench_batched(market32, num_envs, n_steps // 2, device, backend="torch")
        print(f"batched {num_envs:5d} x {SYMBOLS}, torch ops, float32: {sps / 1e6:8.2f} M symbol-steps/s")
    checked = bench_batched(market, 64, steps[64] // 2, device, check=True)
    print(f"batched    64 x {SYMBOLS} with the action check on: {checked / 1e6:8.2f} M symbol-steps/s")
    ref_steps = 3 if args.quick else 10
    reference = bench_reference(market, 4, ref_steps)
    print(f"reference    4 x {SYMBOLS}: {reference / 1e3:8.2f} k symbol-steps/s  ({ref_steps} steps)")
    speedup = figures[f"64x{SYMBOLS}"] / reference
    memory = rollout_bytes(128, 2048, SYMBOLS, num_regime=market.regime.shape[1]) / 2**30
    print(f"speed-up of the batched step at 64 x {SYMBOLS} over the reference: {speedup:,.0f}x")
    print(f"rollout memory, 128 envs x 2048 steps x {SYMBOLS} symbols: {memory:.3f} GiB")
    result = {
        "bench": "env_throughput",
        "device": str(device),
        "backend": backend,
        "symbol_steps_per_s": {k: round(v) for k, v in figures.items()},
        "symbol_steps_per_s_torch_float64": {k: round(v) for k, v in torch_path.items()},
        "symbol_steps_per_s_torch_float32": {k: round(v) for k, v in figures32.items()},
        "symbol_steps_per_s_checked_64x143": round(checked),
        "threads": torch.get_num_threads(),
        "reference_symbol_steps_per_s": round(reference),
        "speedup_vs_reference": round(speedup, 1),
        "rollout_memory_gib_128x2048x143": round(memory, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
