"""Atomic writes: every file or folder appears complete or not at all (temp, then rename)."""

from __future__ import annotations

import json
import os
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


def replace_path(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst`` (file or folder), replacing what was there."""
    if dst.is_dir() and not dst.is_symlink():
        old = temp_sibling(dst, "old")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


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
