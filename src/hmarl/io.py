"""Atomic writes: every file or folder appears complete or not at all (temp, fsync, then rename).

A write killed part way leaves only a temp sibling (``.<name>.tmp-*``, or ``.<name>.old-*`` for a folder
being swapped); :func:`remove_leftovers` clears those of a path before the next write of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh unused name next to ``path`` (same filesystem, so rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{tag}-", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the temp siblings a killed write of ``path`` left (``.<name>.tmp-*``, ``.<name>.old-*``, and
    nested ones such as ``..<name>.tmp-*.tmp-*``); returns what was removed. Call it only while no other
    writer of ``path`` runs (a step's own outputs, a locked checkpoint folder)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(r"\.+" + re.escape(path.name) + r"\.(tmp|old)-")
    found = [p for p in path.parent.iterdir() if pattern.match(p.name)]
    for p in found:
        remove_path(p)
    return found


def fsync_path(path: Path) -> None:
    """Flush a file, or every file and folder under ``path``, to disk (a rename is durable only after
    the data it names is)."""
    if path.is_dir() and not path.is_symlink():
        for sub in sorted(path.rglob("*")):
            if sub.is_file() and not sub.is_symlink():
                _fsync(sub, os.O_RDONLY)
        _fsync_dir(path)
    elif path.is_file():
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders; the rename stays atomic
        _fsync(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` (flushed to disk first) onto ``dst`` (file or folder), replacing what was there."""
    fsync_path(src)
    if dst.is_dir() and not dst.is_symlink():
        old = temp_sibling(dst, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write (file or folder); it replaces ``path`` only on success."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: nothing was written")
        replace_path(tmp, path)
    finally:
        if tmp.exists():
            remove_path(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
