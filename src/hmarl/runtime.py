"""Process-wide torch settings, one helper each: the device a name means, the intra-op thread count, and
determinism (threads, deterministic kernels, seeded global generators). Trainers, the SL and encoder
fitting, the desk and the benches all set these through here, so a run's settings mean the same
everywhere."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` -> ``cuda:<rank>`` (one GPU per DDP rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


def set_threads(n: int) -> None:
    """``n`` torch intra-op threads for the process (0: leave as is)."""
    if n:
        torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (0: leave as is), then restore the setting."""
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_determinism(threads: int, deterministic: bool, device: torch.device) -> None:
    """For a whole training process: ``threads`` intra-op threads (0: torch's default) and, on CPU when
    ``deterministic``, deterministic kernels (same seed => same numbers)."""
    set_threads(threads)
    if deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator (for any library using it) and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)
