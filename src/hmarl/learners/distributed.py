"""torch.distributed helpers: one process per device, gloo on CPU, NCCL on CUDA.

:func:`launch` runs ``fn(info, *args)`` in ``world_size`` processes (``torch.multiprocessing.spawn``) that
meet through a file rendezvous; with ``world_size == 1`` it calls ``fn`` in this process without
``torch.distributed`` at all. Every decision that changes the model (early stop, entropy guard) must use
statistics averaged over ranks (:func:`all_reduce_mean`), so the replicas stay identical.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from hmarl.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _worker(rank: int, fn: Callable, world_size: int, init_file: str, device_name: str, args: tuple) -> None:
    device = resolve_device(device_name, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(
        backend_for(device), init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        fn(DistInfo(rank, world_size, device), *args)
    finally:
        torch_dist.destroy_process_group()


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun / a PyTorchJob."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))


def launch(fn: Callable, world_size: int, device_name: str, *args) -> None:
    """Run ``fn(DistInfo, *args)`` on ``world_size`` ranks (``fn`` must be a module-level function).

    Under torchrun (multi-node PyTorchJob: every process runs the same ``hmarl step`` command) the ranks
    already exist: this process joins them (``env://``) and torchrun's world size wins over
    ``world_size``. Only rank 0 continues into the step's output writing; the other ranks exit when
    training is done, so nothing but rank 0 touches the step outputs."""
    ranks = torchrun_env()
    if ranks is not None:
        rank, size, local = ranks
        device = resolve_device(device_name, local)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend_for(device), init_method="env://", rank=rank, world_size=size)
        try:
            fn(DistInfo(rank, size, device), *args)
        finally:
            torch_dist.destroy_process_group()
        if rank != 0:
            raise SystemExit(0)
        return
    if world_size == 1:
        fn(DistInfo(0, 1, resolve_device(device_name)), *args)
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="hmarl-ddp-") as tmp:
        init_file = str(Path(tmp) / "rendezvous")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_worker, args=(fn, world_size, init_file, device_name, args), nprocs=world_size, join=True)


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` itself is left alone)."""
    if not info.distributed:
        return x
    y = x.detach().clone()
    torch_dist.all_reduce(y)
    return y / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch_dist.barrier()


def wrap(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around ``module`` when running on several ranks (parameters broadcast from rank 0)."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    # buffers (the encoder graph's adjacency) never change: no per-forward sync
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)
