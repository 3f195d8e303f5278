"""The one folder a step may write besides its declared outputs: its scratch folder.

On a cluster the working directory is the image's ``/app`` (root-owned, read-only for the task's UID) and
HOME may be read-only too, so relative paths of the params (TensorBoard ``runs/``, the ``mlruns.db``
fallback, ``mlartifacts/``, relative checkpoint folders) cannot stay relative to the working directory.

    HMARL_HOME set                 -> that folder
    working directory writable     -> the working directory (``make run``, DVC: nothing moves)
    otherwise                      -> <tmp>/hmarl-<uid> (created private)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hmarl.config import HmarlConfig

SCRATCH_ENV = "HMARL_HOME"
_SQLITE = "sqlite:///"


def scratch_dir() -> Path:
    """The scratch folder (created when missing)."""
    named = os.environ.get(SCRATCH_ENV)
    if named:
        path = Path(named)
    elif os.access(Path.cwd(), os.W_OK):
        return Path.cwd()
    else:
        path = Path(tempfile.gettempdir()) / f"hmarl-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path.resolve()


def is_remote(uri: str) -> bool:
    """A tracking server over HTTP(S): artifacts go through it, never to a local artifact location."""
    return uri.split(":", 1)[0].lower() in ("http", "https")


def relative_sqlite(uri: str) -> str | None:
    """The relative database path of ``sqlite:///mlruns.db`` (None for an absolute one or another scheme)."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE) :]
    return None if path.startswith("/") or path == ":memory:" else path


def scratch_overrides(cfg: HmarlConfig, root: Path | None = None) -> list[str]:
    """``--set`` overrides that move the config's relative write locations under the scratch folder.

    Nothing moves when the scratch folder is the working directory. Only bookkeeping locations move
    (tracking files, TensorBoard, resume checkpoints): what is trained and its run keys stay the same."""
    root = root if root is not None else scratch_dir()
    if root.resolve() == Path.cwd().resolve():
        return []
    out = []

    def move(key: str, value: str) -> None:
        if value and not Path(value).is_absolute():
            out.append(f"{key}={_quoted(str(root / value))}")

    tr = cfg.tracking
    db = relative_sqlite(tr.mlflow_uri)
    if db is not None:
        out.append(f"tracking.mlflow_uri={_quoted(_SQLITE + str(root / db))}")
    move("tracking.artifact_root", tr.artifact_root)
    move("tracking.tensorboard_dir", tr.tensorboard_dir)
    move("ppo.checkpoint_dir", cfg.ppo.checkpoint_dir)
    move("master.checkpoint_dir", cfg.master.checkpoint_dir)
    return out


def scratch_environment(root: Path) -> dict[str, str]:
    """Variables that send libraries' caches into the scratch folder instead of a read-only HOME
    (compiled C kernels, matplotlib's font cache); values already set are kept. None when the scratch
    folder is the working directory (a developer's checkout: the caches stay in HOME)."""
    if root.resolve() == Path.cwd().resolve():
        return {}
    wanted = {"HMARL_CACHE": root / "cache" / "hmarl", "MPLCONFIGDIR": root / "cache" / "matplotlib"}
    return {k: str(v) for k, v in wanted.items() if not os.environ.get(k)}


def _quoted(value: str) -> str:
    import json

    return json.dumps(value)  # a YAML scalar that parses back to exactly ``value``
