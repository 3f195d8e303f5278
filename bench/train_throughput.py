"""End-to-end learning throughput of the symbol agents: symbol-transitions/s of rollout + PPO update
(CleanRL-style SPS: agent-steps collected per wall-clock second of the whole update cycle), for the smoke
model and the full-size model at 64 envs x 143 symbols, with the share of time spent in the simulator,
the policy (gathers, forward, sampling, storage) and the update (GAE + minibatch epochs).

    .venv/bin/python bench/train_throughput.py [--quick] [--device cpu|cuda] [--threads N]

Inputs are a synthetic market (tests/env_fixtures.make_store) with random SL probabilities and random
cached 256-d embeddings: throughput does not depend on what they contain. Model and PPO settings are those
of params.yaml (profile smoke: trunk 64, heads 64 -> 32, 2 epochs; profile full: trunk 256, heads
256 -> 128, 4 epochs), 4 minibatches, except the rollout length and the behaviour-cloning warm start
(``agent.warm_start=false``: a one-off fit before the first update, ~85 s of a quick run, not a rate of the
update cycle). One torch thread unless --threads. Each figure is the median SPS of the timed updates after
one warm-up update, also per GFLOP/s of a float32 GEMM timed in the same run (bench/machine_reference.py).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from env_fixtures import make_store  # noqa: E402
from hmarl.agents.data import TrainingData  # noqa: E402
from hmarl.config import load_config  # noqa: E402
from hmarl.data.splits import Fold  # noqa: E402
from hmarl.learners.distributed import DistInfo  # noqa: E402
from hmarl.learners.symbol_trainer import train  # noqa: E402
from hmarl.runtime import resolve_device, set_threads  # noqa: E402
from hmarl.sl.cache import SLCache  # noqa: E402
from machine_reference import gemm_gflops  # noqa: E402

SYMBOLS, ENVS, BARS, EMBED_DIM = 143, 64, 700, 256


def bench_data(folder: Path, embed_dim: int, seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    store = make_store(num_bars=BARS, num_symbols=SYMBOLS, num_features=23, seed=seed)
    probs = rng.dirichlet(np.ones(3), size=(BARS, SYMBOLS, 3)).reshape(BARS, SYMBOLS, 9).astype(np.float32)
    sl = SLCache(probs, np.zeros(BARS, np.int16), np.full(BARS, -1, np.int16), {"fingerprint": "bench"})
    enc = folder / f"encoder_{embed_dim}"
    enc.mkdir(exist_ok=True)
    np.save(enc / "embeddings.npy", rng.standard_normal((BARS, SYMBOLS, embed_dim)).astype(np.float16))
    manifest = {"embed_dim": embed_dim, "fits": [], "version": "bench"}
    return TrainingData(
        store,
        sl,
        enc,
        manifest,
        Fold(0, (30, BARS - 100), (BARS - 100, BARS - 50), (BARS - 50, BARS)),
        "bench",
    )


def measure(profile: str, model: list[str], args, folder: Path, num_steps: int, updates: int) -> dict:
    """Train ``updates`` + 1 updates of ``num_steps`` env steps; figures of all but the first."""
    overrides = [
        f"profile={profile}",
        f"env.num_envs={ENVS}",
        f"ppo.num_steps={num_steps}",
        f"ppo.total_steps={num_steps * (updates + 1)}",
        "tracking.enabled=false",
        f"device={args.device}",
        f"ppo.threads={args.threads}",
        "ppo.progress=false",
        "agent.warm_start=false",  # setup, not the update cycle this bench measures
        *model,
    ]
    cfg = load_config(ROOT / "params.yaml", overrides)
    device = resolve_device(cfg.device)
    result = train(cfg, bench_data(folder, EMBED_DIM), DistInfo(device=device))
    timed = result.series[1:]  # the first update pays for allocations and lazy initialization
    sps = float(np.median([r["SPS"] for r in timed]))
    parts = {k: sum(r[f"time_{k}"] for r in timed) for k in ("env", "policy", "update")}
    total = sum(parts.values())
    params = sum(p.numel() for p in result.agent.parameters())
    out = {
        "sps": sps,
        "time_share": {k: round(v / total, 3) for k, v in parts.items()},
        "parameters": params,
        "update_seconds": float(np.median([r["seconds"] for r in timed])),
        "epochs_run": float(np.mean([r["loss_epochs"] for r in timed])),
    }
    print(
        f"{profile:5s} model ({params:,} parameters): {sps:,.0f} symbol-transitions/s; "
        f"time share {out['time_share']}",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter updates (under a minute)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    # quick: short rollouts for the full model (one update of it takes ~10 s on a 2-core CPU)
    smoke_steps, full_steps, updates = (32, 16, 2) if args.quick else (128, 128, 3)
    t0 = time.perf_counter()
    set_threads(args.threads)  # the trainer sets the same count for its updates
    gflops = gemm_gflops(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        smoke = measure("smoke", [], args, Path(tmp), smoke_steps, updates)
        full = measure("full", [], args, Path(tmp), full_steps, 1 if args.quick else updates)
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "envs_x_symbols": f"{ENVS}x{SYMBOLS}",
                "rollout_steps": {"smoke": smoke_steps, "full": full_steps},
                "symbol_transitions_per_s": round(smoke["sps"]),
                "full_model_symbol_transitions_per_s": round(full["sps"]),
                "reference_gemm_gflops": round(gflops, 2),
                "symbol_transitions_per_gflop": round(smoke["sps"] / gflops, 1),
                "full_model_symbol_transitions_per_gflop": round(full["sps"] / gflops, 1),
                "time_share": smoke["time_share"],
                "full_model_time_share": full["time_share"],
                "parameters": {"smoke": smoke["parameters"], "full": full["parameters"]},
                "goal_symbol_transitions_per_s": 100_000,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
