"""`dvc repro` runs the real stages in a fresh copy of the repo and is a quick no-op the second time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    """The repo's files (tracked or not ignored) in a new git repo, as a fresh clone would have them."""
    dst = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(dst / "src"),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    _run(["git", "init", "-q"], dst, env)
    _run(["git", "add", "-A"], dst, env)
    _run(["git", "commit", "-qm", "clone"], dst, env)
    return dst, env


def test_repro_data_stages_then_noop(clone):
    root, env = clone
    out = _run(["dvc", "repro", "features"], root, env)
    for stage in ("ingest", "validate", "features"):
        assert f"Running stage '{stage}'" in out
    assert (root / "reports/validate/report.html").exists()
    assert (root / "data/features/features.npy").exists()
    assert json.loads((root / "metrics/validate.json").read_text())["success"] == 1.0

    out = _run(["dvc", "repro", "features"], root, env)  # nothing changed: nothing runs
    assert "Running stage" not in out

    # a changed parameter re-runs exactly the stages that read it
    params = (root / "params.yaml").read_text().replace("max_abs_return: 0.5", "max_abs_return: 0.6")
    (root / "params.yaml").write_text(params)
    out = _run(["dvc", "repro", "features"], root, env)
    assert "Running stage 'validate'" in out and "Running stage 'ingest'" not in out

    # code deps are the import closure: a file only `features` imports reruns it alone ...
    (root / "src/hmarl/data/splits.py").write_text(
        (root / "src/hmarl/data/splits.py").read_text() + "\n# edit\n"
    )
    out = _run(["dvc", "repro", "features"], root, env)
    assert "Running stage 'features'" in out
    assert "Running stage 'validate'" not in out and "Running stage 'ingest'" not in out
    # ... and the config schema (read by every step; the hand-written list missed it) reruns all of them
    (root / "src/hmarl/config.py").write_text((root / "src/hmarl/config.py").read_text() + "\n# edit\n")
    out = _run(["dvc", "repro", "features"], root, env)
    assert all(f"Running stage '{s}'" in out for s in ("ingest", "validate", "features"))
