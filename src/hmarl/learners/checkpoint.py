"""Complete, atomic training checkpoints: a killed run resumes exactly where its last checkpoint stood.

A checkpoint holds the weights, the optimizer, the schedulers' state, every random generator (torch CPU
and CUDA, numpy, python, the trainer's sampling generator, the simulator's generator), the simulator's
full state, the last observation, the global step and the telemetry so far. Everything is plain tensors,
numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``.

Layout under a run folder (one per config/data hash, outside the step's outputs)::

    update_0000040/rank0.pt   one file per DDP rank (ranks differ in env state and generators)
    latest.json               {"update": 40}: written by rank 0 after every rank's file is in place

Each file is written to a temp name and renamed; ``latest.json`` moves only after all ranks wrote theirs,
so a kill at any moment leaves the previous complete checkpoint as the latest.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmarl.io import atomic_path, read_json, remove_path, write_json

LATEST = "latest.json"


# --------------------------------------------------------------------------- random generators
def rng_state() -> dict[str, Any]:
    """Global generators of torch (CPU and CUDA), numpy and python, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global one, for libraries)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- simulator state
_SCALARS = (int, float, bool, str, type(None))


def capture_state(obj: Any, _seen: set[int] | None = None) -> dict[str, Any]:
    """Every mutable piece of an object's state: tensors (cloned), generators, numbers, and, recursively,
    tuples/dicts of tensors and helper objects of the same package (each object once: back references
    are not followed). Market data, configs and foreign objects (ctypes bindings, ...) are left out.
    Pairs with :func:`restore_state` on an object built with the same arguments."""
    seen = _seen if _seen is not None else set()
    seen.add(id(obj))
    out: dict[str, Any] = {}
    for name, value in vars(obj).items():
        captured = _capture_value(value, type(obj).__module__.split(".")[1], seen)
        if captured is not _SKIP:
            out[name] = captured
    return out


_SKIP = object()


def _capture_value(value: Any, package: str, seen: set[int]) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return {"__tuple__": [v.detach().clone() for v in value]}
    if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
        return {"__dict__": {k: v.detach().clone() for k, v in value.items()}}
    module = type(value).__module__
    if (
        module.startswith(f"hmarl.{package}.")
        and hasattr(value, "__dict__")
        and not _is_config(value)
        and id(value) not in seen
    ):
        return {"__object__": capture_state(value, seen)}
    return _SKIP


def _is_config(value: Any) -> bool:
    return hasattr(value, "model_dump") or type(value).__name__ == "MarketData"


@torch.inference_mode()  # simulator tensors may be inference tensors: in-place writes need this mode
def restore_state(obj: Any, state: dict[str, Any]) -> None:
    for name, saved in state.items():
        current = getattr(obj, name, None)
        if isinstance(saved, torch.Tensor):
            if isinstance(current, torch.Tensor) and current.shape == saved.shape:
                current.copy_(saved)  # in place: views of the same storage stay views
            else:
                setattr(obj, name, _like(saved, current))
        elif isinstance(saved, dict) and "__generator__" in saved:
            current.set_state(saved["__generator__"])
        elif isinstance(saved, dict) and "__tuple__" in saved:
            kind = type(current) if isinstance(current, tuple) else tuple
            old = list(current) if isinstance(current, tuple) else []
            items = [_like(t, old[i] if i < len(old) else None) for i, t in enumerate(saved["__tuple__"])]
            setattr(obj, name, kind(*items) if hasattr(kind, "_fields") else kind(items))
        elif isinstance(saved, dict) and "__dict__" in saved:
            old = current if isinstance(current, dict) else {}
            setattr(obj, name, {k: _like(v, old.get(k)) for k, v in saved["__dict__"].items()})
        elif isinstance(saved, dict) and "__object__" in saved:
            restore_state(current, saved["__object__"])
        else:
            setattr(obj, name, saved)


def _like(saved: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    """A copy of ``saved`` on the device of the tensor it replaces (checkpoints load on the CPU)."""
    device = current.device if isinstance(current, torch.Tensor) else saved.device
    return saved.to(device, copy=True)


# --------------------------------------------------------------------------- files
class CheckpointStore:
    """Checkpoints of one run (one folder), written by every rank, pointed to by ``latest.json``."""

    def __init__(self, root: str | Path, rank: int = 0, keep: int = 2):
        self.root = Path(root)
        self.rank = rank
        self.keep = keep

    def _path(self, update: int, rank: int) -> Path:
        return self.root / f"update_{update:07d}" / f"rank{rank}.pt"

    def latest_update(self) -> int | None:
        marker = self.root / LATEST
        return int(read_json(marker)["update"]) if marker.exists() else None

    def save(self, update: int, payload: dict[str, Any], barrier: Callable[[], None] = lambda: None) -> Path:
        path = self._path(update, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        barrier()  # every rank's file is in place before the marker moves
        if self.rank == 0:
            write_json(self.root / LATEST, {"update": update})
            self._prune(update)
        barrier()
        return path

    def load_latest(self) -> dict[str, Any] | None:
        """The latest complete checkpoint of this rank, on the CPU (generator states must stay there;
        state dicts and :func:`restore_state` copy the rest onto the devices of what they restore)."""
        update = self.latest_update()
        if update is None:
            return None
        return torch.load(self._path(update, self.rank), map_location="cpu", weights_only=True)

    def _prune(self, latest: int) -> None:
        folders = sorted(p for p in self.root.glob("update_*") if p.is_dir())
        for folder in folders:
            if int(folder.name.split("_")[1]) <= latest and folder not in folders[-self.keep :]:
                remove_path(folder)


def run_key(tree: dict, section: str, bookkeeping: set[str], *inputs: bytes) -> str:
    """Key of a training run's checkpoint folder: the config ``tree`` (minus tracking, the profile name and
    the ``section``'s ``bookkeeping`` keys, which do not change what is trained) and the input digests, so
    a changed config or input never resumes a stale run."""
    tree = {k: v for k, v in tree.items() if k not in ("tracking", "profile")}
    tree[section] = {k: v for k, v in tree[section].items() if k not in bookkeeping}
    h = hashlib.sha256(json.dumps(tree, sort_keys=True).encode())
    for digest in inputs:
        h.update(digest)
    return h.hexdigest()[:16]
