"""The package's C kernels: built ahead of time into the package, else on first use; loaded with ctypes.

Three kernels (:data:`KERNELS`): the simulator's fused step and two inference kernels. Every caller has the
same function in torch; the C code is a faster path, never the only one.

Where a kernel comes from, first match wins:

1. **Prebuilt** in :func:`kernel_dir` (``hmarl/_kernels`` inside the installed package, or
   ``$HMARL_KERNEL_DIR``), written by ``python -m hmarl.cbuild --prebuild [--march x86-64-v3]`` (``make
   install``; the CPU image's builder stage). Each library has a manifest (source hash, flags, the CPU
   features it needs); it is loaded when its source is the shipped one and this CPU has those features. No
   compiler is looked for: a compiler-free image runs the kernels its builder stage built.
2. **Built on first use** with the system compiler (``CC``, default ``cc``, else ``gcc``) into
   ``$HMARL_CACHE`` (default ``~/.cache/hmarl``), keyed by (source, flags, compiler, CPU features), written
   atomically (concurrent builders race harmlessly): a developer's edit of a C file takes effect at once.
3. **Torch**: without a compiler :func:`load` returns None quietly; a build or load that fails warns with
   the compiler's or loader's message and returns None.

Structs passed to C are mirrored with ctypes; each C file exports its struct's layout (``<prefix>_sizeof``,
``<prefix>_layout``: name, offset and size of every field) and :func:`check_layout` compares it with the
mirror at load, so a field added on one side only fails loudly instead of corrupting memory.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
# the inference kernels: OpenMP loops that bind to the libgomp torch has loaded (same soname), so they run on
# torch's own intra-op threads (hmarl/agents/int8_heads.c, hmarl/encoders/attention_complete.c); without
# floating-point traps the compiler vectorizes floor (their exp polynomial)
KERNEL_FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-std=c11")
# the simulator step: no fused multiply-add, so its arithmetic matches the torch path's (parity tests)
STEP_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11")
# CPU feature flags (/proc/cpuinfo) each portable -march level needs: a prebuilt library for one of these
# loads on any CPU with them; one built for another -march (native) only on a CPU with the builder's flags
MARCH_NEEDS = {
    "x86-64": (),
    "x86-64-v2": ("cx16", "popcnt", "sse4_1", "sse4_2", "ssse3"),
    "x86-64-v3": ("cx16", "popcnt", "sse4_1", "sse4_2", "ssse3", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma")
    + ("movbe", "abm", "xsave"),  # abm: lzcnt
}


@dataclass(frozen=True)
class Kernel:
    name: str
    source: Path
    flags: tuple[str, ...]

    def flags_for(self, march: str) -> list[str]:
        return [f"-march={march}" if f.startswith("-march=") else f for f in self.flags]


KERNELS = {
    k.name: k
    for k in (
        Kernel("native_step", PACKAGE / "env" / "native_step.c", STEP_FLAGS),
        Kernel("int8_heads", PACKAGE / "agents" / "int8_heads.c", KERNEL_FLAGS),
        Kernel("attention_complete", PACKAGE / "encoders" / "attention_complete.c", KERNEL_FLAGS),
    )
}

_LOADED: dict[str, ctypes.CDLL | None] = {}


class KernelBuildError(RuntimeError):
    """The compiler ran and failed; the message carries its output."""


def cache_dir() -> Path:
    return Path(os.environ.get("HMARL_CACHE", Path.home() / ".cache" / "hmarl"))


def kernel_dir() -> Path:
    return Path(os.environ.get("HMARL_KERNEL_DIR", PACKAGE / "_kernels"))


def compiler() -> str | None:
    named = os.environ.get("CC")
    return shutil.which(named) if named else (shutil.which("cc") or shutil.which("gcc"))


def _cpu_flags() -> bytes:
    """The CPU's feature flags line (Linux): ``-march=native`` code built on one node must not be loaded on a
    node without its instructions when a cache folder or an image is shared."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return b""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _compile(cc: str, source: Path, flags: list[str], target: Path) -> None:
    """Compile ``source`` into ``target`` atomically; :class:`KernelBuildError` with the compiler's output."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        cmd = [cc, *flags, "-shared", "-fPIC", str(source), "-o", str(built), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise KernelBuildError(f"`{' '.join(cmd)}` exited {result.returncode}:\n{output}")
        os.replace(built, target)


def build(kernel: Kernel) -> Path | None:
    """The first-use build of ``kernel`` in the cache folder, or None without a compiler;
    :class:`KernelBuildError` when the compiler fails."""
    cc = compiler()
    if cc is None:
        return None
    flags = list(kernel.flags)
    identity = kernel.source.read_bytes() + " ".join(flags).encode() + cc.encode() + _cpu_flags()
    target = cache_dir() / f"hmarl_{kernel.name}_{_sha(identity)[:16]}.so"
    if not target.exists():
        _compile(cc, kernel.source, flags, target)
    return target


def prebuilt(kernel: Kernel) -> Path | None:
    """The ahead-of-time build of ``kernel`` in :func:`kernel_dir` when it applies here: built from this
    source, for a CPU feature set this machine has."""
    library = kernel_dir() / f"{kernel.name}.so"
    try:
        manifest = json.loads(library.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("source_sha256") != _sha(kernel.source.read_bytes()) or not library.exists():
        return None
    if manifest.get("machine") != platform.machine():
        return None
    needs = MARCH_NEEDS.get(manifest.get("march"))
    if needs is None:  # -march=native or another: only on a CPU with the builder's flags
        return library if manifest.get("cpu_flags_sha256") == _sha(_cpu_flags()) else None
    have = set(_cpu_flags().split(b":", 1)[-1].decode(errors="replace").split())
    return library if set(needs) <= have else None


def prebuild(march: str = "native", names: list[str] | None = None) -> dict[str, Path]:
    """Build the kernels (all, or ``names``) into :func:`kernel_dir` for ``-march=march`` with their
    manifests. Raises :class:`KernelBuildError` (the compiler's message) when one fails, RuntimeError without
    a compiler."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install cc/gcc)")
    out = {}
    for name in names or list(KERNELS):
        kernel = KERNELS[name]
        library = kernel_dir() / f"{name}.so"
        flags = kernel.flags_for(march)
        _compile(cc, kernel.source, flags, library)
        manifest = {
            "source_sha256": _sha(kernel.source.read_bytes()),
            "flags": flags,
            "march": march,
            "machine": platform.machine(),
            "cpu_flags_sha256": _sha(_cpu_flags()),
        }
        tmp = library.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, library.with_suffix(".json"))
        out[name] = library
    return out


class _Field(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_int64), ("size", ctypes.c_int64)]


def check_layout(lib: ctypes.CDLL, prefix: str, mirror: type[ctypes.Structure]) -> None:
    """The C struct exported as ``<prefix>_sizeof``/``<prefix>_layout`` must be ``mirror`` field by field
    (name, offset, size); RuntimeError naming the differences otherwise."""
    sizeof, layout = getattr(lib, f"{prefix}_sizeof"), getattr(lib, f"{prefix}_layout")
    sizeof.argtypes, sizeof.restype = [], ctypes.c_int64
    layout.argtypes, layout.restype = [ctypes.POINTER(ctypes.POINTER(_Field))], ctypes.c_int64
    fields = ctypes.POINTER(_Field)()
    count = layout(ctypes.byref(fields))
    c_side = {fields[i].name.decode(): (fields[i].offset, fields[i].size) for i in range(count)}
    py_side = {
        name: (getattr(mirror, name).offset, getattr(mirror, name).size) for name, *_ in mirror._fields_
    }
    wrong = sorted(n for n in c_side.keys() | py_side.keys() if c_side.get(n) != py_side.get(n))
    if wrong or sizeof() != ctypes.sizeof(mirror):
        detail = ", ".join(f"{n}: C {c_side.get(n)} vs ctypes {py_side.get(n)}" for n in wrong[:8])
        raise RuntimeError(
            f"{prefix}: the ctypes mirror {mirror.__name__} does not match the C struct (sizeof C "
            f"{sizeof()} vs ctypes {ctypes.sizeof(mirror)}; (offset, size) per field: {detail or 'all equal'})"
        )


def load(name: str, bind: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The library of kernel ``name`` (resolved on the process's first call; later calls return the same),
    with ``bind`` declaring its functions and checking its layouts; None where it is neither prebuilt nor
    buildable here. A failed build or load warns with the compiler's or loader's message."""
    if name not in _LOADED:
        kernel, lib = KERNELS[name], None
        try:
            path = prebuilt(kernel) or build(kernel)
            if path is not None:
                lib = ctypes.CDLL(str(path))
                bind(lib)
            else:
                log.info("no C compiler: kernel %s runs in torch", name)
        except (
            KernelBuildError,
            OSError,
            AttributeError,
        ) as err:  # a compiler error, not loadable, a symbol missing
            warnings.warn(f"hmarl kernel {name} unavailable, using its torch path: {err}", RuntimeWarning, 2)
            lib = None
        _LOADED[name] = lib
    return _LOADED[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmarl.cbuild", description=__doc__.split("\n")[0])
    parser.add_argument("--prebuild", action="store_true", help="build every kernel into the package")
    parser.add_argument(
        "--march", default="native", help="-march of the prebuilt kernels (images: x86-64-v3)"
    )
    parser.add_argument("--require", action="store_true", help="fail without a compiler (image builds)")
    args = parser.parse_args(argv)
    if not args.prebuild:
        parser.error("nothing to do: pass --prebuild")
    if compiler() is None and not args.require:
        print("hmarl.cbuild: no C compiler: kernels not prebuilt, every caller runs its torch path")
        return 0
    try:
        for name, path in prebuild(args.march).items():
            print(f"hmarl.cbuild: {name} -> {path}")
    except (KernelBuildError, RuntimeError) as err:
        print(f"hmarl.cbuild: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
