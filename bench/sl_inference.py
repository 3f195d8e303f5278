"""SL classifier inference speed: ms per (bar, symbol) sample for the MLP / LSTM / GRU at batch 1 and at
batch 143 x 64 (143 symbols x 64 bars, the shape of one rollout slice), CPU (CUDA when present).

    .venv/bin/python bench/sl_inference.py [--quick] [--device cpu|cuda] [--threads N] [--profile full]

Models are built with the ``sl:`` params of the profile (default ``full``, the seed's sizes; random weights:
speed does not depend on them) in
eval mode under ``torch.inference_mode``, batched through :func:`hmarl.sl.models.predict_logits` (the
path the cache uses: chunks of ``INFERENCE_CHUNK`` on CPU). Inputs are windows gathered from a random ``(T, S, 23)`` store
tensor; the gather is timed separately (``gather_ms_per_sample``). Each figure is the best of several timed
repeats after a warm-up (the machine may be shared: the best repeat is the least disturbed).
Writes ``reports/sl_inference_benchmarks.json``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hmarl.config import load_config
from hmarl.data.windows import gather_windows
from hmarl.io import write_json
from hmarl.runtime import resolve_device, set_threads
from hmarl.sl.models import INFERENCE_CHUNK, MODEL_NAMES, build_model, predict_logits
from machine_reference import gemm_gflops

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS, BARS, WINDOW, FEATURES = 143, 64, 24, 23
GOAL_MS = 0.01  # batched, 2-core CPU


def best_ms(fn, device: torch.device, repeats: int, inner: int) -> float:
    """Best over ``repeats`` of the mean time of ``inner`` calls, in ms."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / inner * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (well under a minute)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on CPU (default 1: on a shared 2-core box a second thread costs more "
        "in synchronization than it gains at these sizes; 0: torch default)",
    )
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument(
        "--profile", default="full", help="params profile whose model sizes are timed (default: full)"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--out", default=str(ROOT / "reports" / "sl_inference_benchmarks.json"))
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = load_config(args.params, [f"profile={args.profile}", *args.overrides])
    device = resolve_device(args.device)
    repeats, inner = (3, 5) if args.quick else (7, 20)

    torch.manual_seed(0)
    store = torch.randn(BARS + WINDOW + 100, SYMBOLS, FEATURES, device=device)
    bars = torch.arange(WINDOW + 50, WINDOW + 50 + BARS, device=device)
    batched = gather_windows(store, bars, WINDOW).reshape(-1, WINDOW, FEATURES).contiguous()
    single = batched[:1].contiguous()
    gather_ms = best_ms(
        lambda: gather_windows(store, bars, WINDOW).reshape(-1, WINDOW, FEATURES).contiguous(),
        device,
        repeats,
        inner,
    )

    results = {}
    with torch.inference_mode():
        for name in MODEL_NAMES:
            model = build_model(name, getattr(cfg.sl, name), WINDOW, FEATURES).to(device).eval()
            for x in (single, batched):
                for _ in range(3):
                    model(x)  # warm-up
            results[name] = {
                "batch1": best_ms(lambda m=model: m(single), device, repeats, inner * 10),
                "batched": best_ms(lambda m=model: predict_logits(m, batched), device, repeats, inner)
                / len(batched),
                "params": sum(p.numel() for p in model.parameters()),
            }
    gflops = gemm_gflops(device)  # the machine's reference, same threads and device
    report = {
        "bench": "sl_inference",
        "reference_gemm_gflops": gflops,
        # batched samples per second per GFLOP/s of the reference: comparable across machines
        "batched_samples_per_gflop": {n: 1e3 / r["batched"] / gflops for n, r in results.items()},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": {
            "batch1": 1,
            "batched": len(batched),
            "shape": f"{SYMBOLS} symbols x {BARS} bars",
            "cpu_chunk": INFERENCE_CHUNK,
        },
        "ms_per_sample": {n: {"batch1": r["batch1"], "batched": r["batched"]} for n, r in results.items()},
        "params": {n: r["params"] for n, r in results.items()},
        "gather_ms_per_sample": gather_ms / len(batched),
        "goal_batched_ms": GOAL_MS,
        "meets_goal": {n: r["batched"] <= GOAL_MS for n, r in results.items()},
        "profile": cfg.profile,
        "hparams": {n: getattr(cfg.sl, n).model_dump() for n in MODEL_NAMES},
        "quick": args.quick,
    }
    write_json(args.out, report)
    for name, r in results.items():
        print(f"{name:5s} batch1 {r['batch1']:.4f} ms/sample   batched {r['batched']:.5f} ms/sample")
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
