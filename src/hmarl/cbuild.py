"""C sources shipped with the package, compiled on first use with the system C compiler, loaded with ctypes.

Each library is built once per (source, flags, compiler, CPU features) into ``$HMARL_CACHE`` (default
``~/.cache/hmarl``) and written atomically (concurrent builders race harmlessly). :func:`load` returns None when no compiler
builds it; every caller then runs the same function in torch (the C code is a faster path, never the only
one). ``CC`` names the compiler (default ``cc``, else ``gcc``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

# the inference kernels: OpenMP loops that bind to the libgomp torch has loaded (same soname), so they run on
# torch's own intra-op threads (hmarl/agents/int8_heads.c, hmarl/encoders/attention_complete.c); without
# floating-point traps the compiler vectorizes floor (their exp polynomial)
KERNEL_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-std=c11"]

_LOADED: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("HMARL_CACHE", Path.home() / ".cache" / "hmarl"))


def _cpu_features() -> bytes:
    """The CPU's feature flags (Linux): ``-march=native`` code built on one node must not be loaded on a node
    without its instructions when the cache folder is shared."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return b""


def build(source: Path, flags: list[str]) -> Path | None:
    """The shared library of ``source`` built with ``flags`` (cached), or None without a working compiler."""
    named = os.environ.get("CC")
    compiler = shutil.which(named) if named else (shutil.which("cc") or shutil.which("gcc"))
    if compiler is None:
        return None
    identity = source.read_bytes() + " ".join(flags).encode() + compiler.encode() + _cpu_features()
    key = hashlib.sha256(identity).hexdigest()[:16]
    target = cache_dir() / f"hmarl_{source.stem}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(built), "-lm"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return None
        os.replace(built, target)
    return target


def load(source: Path, flags: list[str], bind: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The library of ``source`` (built on the first call of the process; later calls return the same),
    with ``bind`` declaring its functions' argument types; None when it cannot be built or loaded here."""
    key = str(source)
    if key not in _LOADED:
        lib = None
        try:
            path = build(source, flags)
            if path is not None:
                lib = ctypes.CDLL(str(path))
                bind(lib)
        except (OSError, AttributeError):  # not loadable, or a symbol missing
            lib = None
        _LOADED[key] = lib
    return _LOADED[key]
