"""A reference computed in the same run as a bench's figure: this machine's float32 matrix-multiply rate.

Absolute rates differ 2-3x between machines of the same kind (and a shared box is noisy), so the learning and
inference benches also report their figure per GFLOP/s of a fixed GEMM timed in the same process, with the
same threads and device: a change in that ratio is a change in the code, not in the machine.
"""

from __future__ import annotations

import time

import torch

SIZE, REPEATS = 512, 20


def gemm_gflops(device: str | torch.device = "cpu") -> float:
    """Best-of-3 float32 GEMM rate (GFLOP/s) of ``REPEATS`` products of two ``SIZE x SIZE`` matrices."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(SIZE, SIZE, generator=g).to(device)
    b = torch.randn(SIZE, SIZE, generator=g).to(device)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(REPEATS):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * SIZE**3 * REPEATS / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
