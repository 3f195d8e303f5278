"""Complete, atomic training checkpoints: a killed run resumes exactly where its last checkpoint stood.

A checkpoint holds the weights, the optimizer, the schedulers' state, every random generator (torch CPU
and CUDA, numpy, python, the trainer's sampling generator, the simulator's generator), the simulator's
full state, the last observation, the global step and the telemetry so far. Everything is plain tensors,
numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``.

Layout under a run folder (one per config/data hash, outside the step's outputs)::

    update_0000040/rank0.pt        one file per DDP rank (ranks differ in env state and generators)
    update_0000040/manifest.json   {"update", "world_size", "files": {"rank0.pt": {"bytes", "sha256"}}}:
                                   written by rank 0 after every rank's file is in place
    lock                           held by the run writing here (:func:`run_lock`): one writer per run key

Each file is written to a temp name, fsynced and renamed; the manifest comes last, so a kill at any moment
leaves the previous sealed checkpoint, and a file damaged later (truncated, altered) fails its checksum:
resume then takes the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmarl.errors import StepError
from hmarl.io import atomic_path, read_json, remove_path, write_json, write_text

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


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
    """Checkpoints of one run (one folder), written by every rank; each complete checkpoint is sealed by
    its ``manifest.json`` (every rank file's size and sha256), written last by rank 0.

    :meth:`load_latest` takes the newest checkpoint that verifies (manifest readable, every rank file
    present with its size and checksum, this rank's file loadable) and records in :attr:`skipped` which
    newer ones it passed over and why; a rerun after a truncated write (disk full, node lost) therefore
    resumes from the previous complete checkpoint instead of failing on it."""

    def __init__(self, root: str | Path, rank: int = 0, keep: int = 2, world_size: int = 1):
        self.root = Path(root)
        self.rank = rank
        self.keep = keep
        self.world_size = world_size
        self.skipped: list[str] = []  # "update_0000040: <why>" for each newer checkpoint not resumed

    def _folder(self, update: int) -> Path:
        return self.root / f"update_{update:07d}"

    def _folders(self) -> list[tuple[int, Path]]:
        """(update, folder), newest first."""
        found = []
        for p in self.root.glob("update_*"):
            number = p.name.split("_", 1)[1]
            if p.is_dir() and number.isdigit():
                found.append((int(number), p))
        return sorted(found, reverse=True)

    def latest_update(self) -> int | None:
        """The newest update with a manifest (not verified: see :meth:`load_latest`)."""
        return next((u for u, p in self._folders() if (p / MANIFEST).is_file()), None)

    def save(self, update: int, payload: dict[str, Any], barrier: Callable[[], None] = lambda: None) -> Path:
        folder = self._folder(update)
        path = folder / f"rank{self.rank}.pt"
        folder.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            remove_path(folder / MANIFEST)  # rewriting an update (a skipped one): unsealed until done
        with atomic_path(path) as tmp:  # temp name, fsync, rename
            torch.save(payload, tmp)
        barrier()  # every rank's file is in place before the manifest seals the checkpoint
        if self.rank == 0:
            files = {f"rank{r}.pt": _file_digest(folder / f"rank{r}.pt") for r in range(self.world_size)}
            write_json(folder / MANIFEST, {"update": update, "world_size": self.world_size, "files": files})
            self._prune(update)
        barrier()
        return path

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that verifies, on the CPU (generator states must stay there; state dicts
        and :func:`restore_state` copy the rest onto the devices of what they restore); None if none."""
        self.skipped = []
        for update, folder in self._folders():
            try:
                payload = self._verified(update, folder)
            except _Unusable as why:
                self.skipped.append(f"{folder.name}: {why}")
                log.warning("checkpoint %s skipped: %s", folder, why)
                continue
            if self.skipped:
                log.warning("resuming from %s (newer ones skipped: %s)", folder, "; ".join(self.skipped))
            return payload
        return None

    def _verified(self, update: int, folder: Path) -> dict[str, Any]:
        try:
            manifest = read_json(folder / MANIFEST)
            files = manifest["files"]
            ok = int(manifest["update"]) == update and int(manifest["world_size"]) == self.world_size
        except FileNotFoundError:
            raise _Unusable("no manifest (the write did not complete)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise _Unusable(f"unreadable manifest ({type(exc).__name__}: {exc})") from None
        if not ok:
            raise _Unusable(
                f"manifest names update {manifest['update']} / world size {manifest['world_size']}"
            )
        for rank in range(self.world_size):
            name = f"rank{rank}.pt"
            if not isinstance(files.get(name), dict):
                raise _Unusable(f"manifest lists no {name}")
            if not (folder / name).is_file():
                raise _Unusable(f"{name} missing")
            if _file_digest(folder / name) != files[name]:
                raise _Unusable(f"{name} does not match its checksum (truncated or altered)")
        try:
            return torch.load(folder / f"rank{self.rank}.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any unreadable file is one more checkpoint to skip)
            raise _Unusable(f"rank{self.rank}.pt does not load ({type(exc).__name__})") from None

    def _prune(self, latest: int) -> None:
        """Keep the ``keep`` newest sealed checkpoints up to ``latest``; drop older ones, unsealed ones and
        newer ones (skipped at resume, now superseded), and temp files of killed writes."""
        sealed = [u for u, p in self._folders() if u <= latest and (p / MANIFEST).is_file()][: self.keep]
        for update, folder in self._folders():
            if update not in sealed:
                remove_path(folder)
            else:
                for leftover in folder.glob(".*.tmp-*"):
                    remove_path(leftover)


class _Unusable(Exception):
    """Why a checkpoint cannot be resumed from."""


def _file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


# --------------------------------------------------------------------------- one writer per run key
class RunLockedError(StepError):
    """Another process holds the run key's checkpoint folder."""


@contextmanager
def run_lock(folder: str | Path, wait_s: float, setting: str) -> Iterator[None]:
    """Hold the advisory lock of a run key's checkpoint ``folder`` (``flock`` through the ``filelock``
    package; the kernel drops it when the holder dies, so a killed run never leaves it stale). A second run
    of the same key waits up to ``wait_s`` seconds (the params key ``setting``), then raises
    :class:`RunLockedError`: two writers of one checkpoint folder would resume from and prune each
    other's files."""
    import filelock

    from hmarl.learners.distributed import torchrun_env

    ranks = torchrun_env()
    if ranks is not None and ranks[0] != 0:  # torchrun: every rank runs the step; rank 0 holds the lock
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, owner = filelock.FileLock(folder / "lock"), folder / "lock.owner"
    try:
        lock.acquire(timeout=wait_s)
    except filelock.Timeout:
        holder = owner.read_text().strip() if owner.is_file() else "unknown"
        raise RunLockedError(
            f"{folder}: another run of this run key is writing its checkpoints ({holder}); waited "
            f"{wait_s:g} s ({setting}). Let it finish (this run then resumes from its last checkpoint) or "
            "stop it"
        ) from None
    try:
        write_text(
            owner, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
        )
        yield
    finally:
        lock.release()


def run_key(tree: dict, section: str, bookkeeping: set[str], *inputs: bytes) -> str:
    """Key of a training run's checkpoint folder: the config ``tree`` (minus tracking, the desk's limits, the profile name and
    the ``section``'s ``bookkeeping`` keys, which do not change what is trained) and the input digests, so
    a changed config or input never resumes a stale run."""
    tree = {k: v for k, v in tree.items() if k not in ("tracking", "profile", "desk")}
    tree[section] = {k: v for k, v in tree[section].items() if k not in bookkeeping}
    h = hashlib.sha256(json.dumps(tree, sort_keys=True).encode())
    for digest in inputs:
        h.update(digest)
    return h.hexdigest()[:16]
