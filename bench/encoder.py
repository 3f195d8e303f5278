"""Shared-encoder inference speed: forward samples/s (one sample = one (bar, symbol) window) and the time to
build the full embedding cache for 143 symbols x 4,103 daily bars, CPU (CUDA when present).

    .venv/bin/python bench/encoder.py [--quick] [--device cpu|cuda] [--threads N] [--profile full]

The encoder is built from the ``encoder:`` params of the profile (default ``full``: every branch on) over a
random ``(4103, 143, 23)`` store tensor with a correlation graph from random returns (speed does not depend
on the weights). The cache build runs the real path (:func:`hmarl.encoders.pretrain.embed`, float16 into a
memory-mapped ``.npy``). ``--quick`` times a slice of the bars and extrapolates (finishes within a minute).
The forward rate is also given per GFLOP/s of a float32 GEMM timed in the same run (machine_reference.py).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hmarl.config import load_config
from hmarl.data.windows import gather_windows
from hmarl.encoders.branches import correlation_adjacency
from hmarl.encoders.model import SharedEncoder
from hmarl.encoders.pretrain import embed
from hmarl.runtime import resolve_device, set_threads
from machine_reference import gemm_gflops

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS, BARS, WINDOW, FEATURES = 143, 4103, 24, 23


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="time a slice of the cache and extrapolate")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (0: torch default)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--profile", default="full")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = ap.parse_args()
    set_threads(args.threads)
    cfg = load_config(args.params, [f"profile={args.profile}", *args.overrides])
    enc_cfg, device = cfg.encoder, resolve_device(args.device)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    adjacency = correlation_adjacency(rng.standard_normal((500, SYMBOLS)), enc_cfg.graph_top_k)
    encoder = SharedEncoder(enc_cfg, WINDOW, FEATURES, adjacency).to(device).eval()
    store = torch.randn(BARS, SYMBOLS, FEATURES, device=device)
    priors = torch.softmax(torch.randn(BARS, SYMBOLS, 9, device=device), -1)

    batch = enc_cfg.embed_batch_bars
    bars = torch.arange(1000, 1000 + batch, device=device)
    windows = gather_windows(store, bars, WINDOW)
    with torch.inference_mode():
        encoder(windows, priors[bars])  # warm-up
        best = float("inf")
        for _ in range(2 if args.quick else 5):
            _sync(device)
            start = time.perf_counter()
            encoder(windows, priors[bars])
            _sync(device)
            best = min(best, time.perf_counter() - start)
    samples_per_s = batch * SYMBOLS / best
    gflops = gemm_gflops(device)  # the machine's reference, same threads and device

    all_bars = np.arange(WINDOW - 1, BARS)
    timed = all_bars[: 4 * batch] if args.quick else all_bars
    with tempfile.TemporaryDirectory() as tmp:
        out = np.lib.format.open_memmap(
            Path(tmp) / "embeddings.npy",
            mode="w+",
            dtype=np.float16,
            shape=(BARS, SYMBOLS, enc_cfg.embed_dim),
        )
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(timed), 1024):
            chunk = timed[i : i + 1024]
            out[chunk] = embed(encoder, store, chunk, WINDOW, batch, priors).cpu().numpy()
        out.flush()
        _sync(device)
        elapsed = time.perf_counter() - start
    cache_seconds = elapsed * len(all_bars) / len(timed)

    report = {
        "bench": "encoder",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "samples_per_s": samples_per_s,
        "ms_per_sample": 1e3 / samples_per_s,
        "reference_gemm_gflops": gflops,
        "samples_per_gflop": samples_per_s / gflops,
        "batch_samples": batch * SYMBOLS,
        "cache_seconds": cache_seconds,
        "cache_extrapolated": bool(args.quick),
        "cache_shape": [BARS, SYMBOLS, enc_cfg.embed_dim],
        "cache_samples_per_s": len(timed) * SYMBOLS / elapsed,
        "branches": [n for n, on in enc_cfg.branches.model_dump().items() if on],
        "params": sum(p.numel() for p in encoder.parameters()),
        "profile": cfg.profile,
        "quick": args.quick,
    }
    print(
        f"encoder forward {samples_per_s:,.0f} samples/s; full cache {BARS} x {SYMBOLS}: {cache_seconds:.1f} s"
        + (" (extrapolated)" if args.quick else "")
    )
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
