"""The C kernels as a build artefact (hmarl/cbuild.py): every kernel builds and loads wherever a compiler
exists (CI fails otherwise, nothing is skipped there), a prebuilt kernel loads without a compiler, a stale or
foreign prebuilt one is ignored, a failed build warns with the compiler's message, and a ctypes mirror that
differs from its C struct fails at load."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hmarl import cbuild
from hmarl.encoders import inference

ROOT = Path(__file__).resolve().parents[1]
LOAD_ALL = (
    "import warnings; warnings.simplefilter('error')\n"
    "from hmarl import cbuild\n"
    "from hmarl.env import native\n"
    "from hmarl.agents import int8_heads\n"
    "from hmarl.encoders import inference\n"
    "libs = [native.load(), int8_heads.load(), cbuild.load('attention_complete', inference._bind)]\n"
    "print(*[lib is not None for lib in libs])\n"
    "print(*[lib._name if lib is not None else '-' for lib in libs])\n"
)
needs_compiler = pytest.mark.skipif(cbuild.compiler() is None, reason="no C compiler here")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )


@needs_compiler
def test_every_kernel_builds_and_loads_where_a_compiler_exists(tmp_path):
    """From source (no prebuilt kernels, empty cache), warnings as errors: a kernel that does not compile,
    link or match its mirror fails here."""
    out = _run(LOAD_ALL, HMARL_CACHE=str(tmp_path / "cache"), HMARL_KERNEL_DIR=str(tmp_path / "none"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["True", "True", "True"]
    assert len(list((tmp_path / "cache").glob("hmarl_*.so"))) == 3


@needs_compiler
def test_prebuilt_kernels_load_without_a_compiler(tmp_path):
    """`--prebuild --march x86-64-v3` (the image's builder stage), then a process with no compiler and an empty
    cache loads them from the kernel folder (the Kubeflow image's case) and builds nothing."""
    kernels = tmp_path / "kernels"
    if not set(cbuild.MARCH_NEEDS["x86-64-v3"]) <= set(cbuild._cpu_flags().decode().split()):
        pytest.skip("this CPU lacks x86-64-v3")
    built = _run(
        "from hmarl import cbuild; raise SystemExit(cbuild.main(['--prebuild', '--march', 'x86-64-v3']))",
        HMARL_KERNEL_DIR=str(kernels),
    )
    assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in kernels.glob("*.so")) == sorted(f"{k}.so" for k in cbuild.KERNELS)
    manifest = json.loads((kernels / "native_step.json").read_text())
    assert manifest["march"] == "x86-64-v3" and "-march=x86-64-v3" in manifest["flags"]
    out = _run(
        LOAD_ALL,
        CC=str(tmp_path / "no-such-cc"),
        HMARL_CACHE=str(tmp_path / "cache"),
        HMARL_KERNEL_DIR=str(kernels),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["True", "True", "True"]
    assert all(Path(name).parent == kernels for name in out.stdout.split()[3:])
    assert not (tmp_path / "cache").exists()


@needs_compiler
def test_a_stale_or_foreign_prebuilt_kernel_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HMARL_KERNEL_DIR", str(tmp_path))
    kernel = cbuild.KERNELS["int8_heads"]
    cbuild.prebuild("native", ["int8_heads"])
    assert cbuild.prebuilt(kernel) == tmp_path / "int8_heads.so"
    manifest_path = tmp_path / "int8_heads.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "cpu_flags_sha256": "0" * 64}))  # built on another CPU
    assert cbuild.prebuilt(kernel) is None
    manifest_path.write_text(json.dumps({**manifest, "source_sha256": "0" * 64}))  # an older source
    assert cbuild.prebuilt(kernel) is None
    manifest_path.write_text(json.dumps({**manifest, "march": "x86-64"}))  # portable: any x86-64 CPU
    assert cbuild.prebuilt(kernel) == tmp_path / "int8_heads.so"


def test_a_failed_build_warns_with_the_compilers_message(tmp_path, monkeypatch, capsys):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'int8_heads.c:1: error: the compiler says no' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("HMARL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HMARL_KERNEL_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(cbuild, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match=r"int8_heads unavailable.*exited 1:\n.*the compiler says no"):
        assert cbuild.load("int8_heads", lambda lib: None) is None
    assert cbuild.main(["--prebuild"]) == 1
    assert "the compiler says no" in capsys.readouterr().err


def test_without_a_compiler_prebuild_says_so_and_require_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("HMARL_KERNEL_DIR", str(tmp_path / "kernels"))
    assert cbuild.main(["--prebuild"]) == 0  # make install on a compiler-free machine
    assert "no C compiler" in capsys.readouterr().out
    assert cbuild.main(["--prebuild", "--require"]) == 1  # an image build
    assert "no C compiler" in capsys.readouterr().err
    assert not (tmp_path / "kernels").exists()


@needs_compiler
def test_a_mirror_that_differs_from_the_c_struct_fails_at_load():
    lib = cbuild.load("attention_complete", inference._bind)
    assert lib is not None
    cbuild.check_layout(lib, "hm_layer", inference.HmLayer)  # the real mirror matches
    fields = list(inference.HmLayer._fields_)
    swapped = type("Swapped", (ctypes.Structure,), {"_fields_": [fields[1], fields[0], *fields[2:]]})
    with pytest.raises(RuntimeError, match=r"bn1: C \(8, 8\) vs ctypes \(0, 8\)"):
        cbuild.check_layout(lib, "hm_layer", swapped)
    missing = type("Missing", (ctypes.Structure,), {"_fields_": fields[:-1]})
    with pytest.raises(RuntimeError, match=r"sdh: C \(\d+, 4\) vs ctypes None"):
        cbuild.check_layout(lib, "hm_layer", missing)
