"""Reading saved files that may be missing, truncated, empty, crafted or foreign: every problem is a
:class:`~hmarl.errors.DataError` ``<file>: <what is wrong>`` (the CLI prints it, exit 2, no traceback).

Weights load with ``torch.load(weights_only=True)`` only: a file holding anything but tensors and plain
values is refused unread, and the message never suggests loading it unsafely. Paths that a manifest names
are resolved (symbolic links followed) and must stay inside the folder the manifest describes.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hmarl.errors import DataError

T = TypeVar("T")
_KIND_NAMES = {list: "a list", dict: "an object", str: "a string", int: "a whole number", float: "a number"}


def _existing(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: missing")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")


def _first_line(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line[:120]}" if line else type(exc).__name__


def read_weights(path: str | Path) -> dict[str, Any]:
    """A saved dict of tensors and plain values (a checkpoint, ``agent.pt``, ``master.pt``)."""
    import torch

    path = Path(path)
    _existing(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: refused: it holds objects other than tensors and plain values (a crafted or foreign "
            "file; nothing in it was run)"
        ) from None
    except Exception as exc:  # noqa: BLE001 (zip reader, EOF, unknown format: all a damaged file)
        raise DataError(f"{path}: damaged or not a torch checkpoint ({_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def read_document(path: str | Path) -> dict[str, Any]:
    """A JSON object (a manifest, ``meta.json``)."""
    path = Path(path)
    _existing(path)
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    return doc


def read_arrays(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Named finite float arrays of an ``.npz`` (no pickled objects)."""
    path = Path(path)
    _existing(path)
    try:  # our own handle: np.load leaves its file open when the archive is damaged
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {sorted(z.files)})")
            arrays = {n: np.asarray(z[n]) for n in names}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: damaged or not an .npz archive ({_first_line(exc)})") from None
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise DataError(f"{path}: array {name!r} is not numeric (dtype {a.dtype})")
        if not np.isfinite(a).all():
            raise DataError(f"{path}: array {name!r} holds NaN or infinite values")
    return arrays


def inside(root: str | Path, relative: object, named_by: str | Path) -> Path:
    """``root/relative`` when it resolves (links followed) inside ``root``; a manifest naming a path that
    leads out (``../../etc/passwd``, an absolute path, a link) is refused."""
    root = Path(root)
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{named_by}: expected a relative path inside {root}, found {relative!r}")
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"{named_by}: path {relative!r} leads outside {root} (refused)")
    return target


def typed_key(doc: dict, key: str, kind: type | tuple[type, ...], path: str | Path) -> Any:
    """``doc[key]``, which must be of ``kind`` (a bool is not an int here)."""
    if key not in doc:
        raise DataError(f"{path}: missing key {key!r}")
    value, kinds = doc[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise DataError(
            f"{path}: key {key!r} must be {wanted}, found {_KIND_NAMES.get(type(value), type(value).__name__)}"
        )
    return value


def guarded(path: str | Path, build: Callable[[], T], what: str) -> T:
    """``build()`` (a model rebuilt from the file at ``path``), any failure a DataError naming the file:
    a payload whose keys, shapes or settings do not fit the model it claims to be."""
    try:
        return build()
    except DataError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (every inconsistency of a saved file is the file's problem)
        raise DataError(f"{path}: not a valid {what} ({_first_line(exc)})") from None
