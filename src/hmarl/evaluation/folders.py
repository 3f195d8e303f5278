"""The layout of the per-seed / per-fold output folders the gate and promotion read.

``reports/stage5/seed_<s>/`` (one Stage 5 run per seed of ``stage5.seeds``) and
``reports/walk_forward/fold_<k>/`` (one walk-forward evaluation per fold of ``splits.n_folds``): coverage is
checked first, naming what is missing; folders of other seeds/folds (left by an older config) are ignored
with a note.
"""

from __future__ import annotations

import re
from pathlib import Path

from hmarl.config import ConfigError, HmarlConfig
from hmarl.errors import DataError


def _indexed(folder: Path, prefix: str) -> dict[int, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    pattern = re.compile(rf"{prefix}(-?\d+)")
    return {int(m.group(1)): p for p in folder.iterdir() if p.is_dir() and (m := pattern.fullmatch(p.name))}


def seed_folders(cfg: HmarlConfig, stage5_dir: str | Path, notes: list[str]) -> dict[int, Path]:
    """``seed_<s>`` folder of every seed of ``stage5.seeds`` (DataError naming the missing ones)."""
    found = _indexed(Path(stage5_dir), "seed_")
    missing = [s for s in cfg.stage5.seeds if s not in found]
    if missing:
        raise DataError(
            f"{stage5_dir}: no Stage 5 run for seed(s) {missing} (stage5.seeds={cfg.stage5.seeds}; "
            f"expected seed_<seed>/values.json, found seeds {sorted(found)})"
        )
    extra = sorted(set(found) - set(cfg.stage5.seeds))
    if extra:
        notes.append(f"Stage 5 runs of seeds {extra} are not in stage5.seeds: ignored")
    return {s: found[s] for s in cfg.stage5.seeds}


def fold_folders(cfg: HmarlConfig, walk_forward_dir: str | Path, notes: list[str]) -> dict[int, Path]:
    """``fold_<k>`` folder of every fold of ``splits.n_folds``; ``walk_forward.folds`` must list them all."""
    n = cfg.splits.n_folds
    wanted = sorted(cfg.walk_forward.folds)
    if wanted != list(range(n)):
        missing = sorted(set(range(n)) - set(wanted))
        unknown = sorted(set(wanted) - set(range(n)))
        raise ConfigError(
            f"walk_forward.folds: {wanted} must list every fold of splits.n_folds={n}"
            + (f"; missing fold(s) {missing}" if missing else "")
            + (f"; no such fold(s) {unknown}" if unknown else "")
        )
    found = _indexed(Path(walk_forward_dir), "fold_")
    missing = [k for k in wanted if k not in found]
    if missing:
        raise DataError(
            f"{walk_forward_dir}: no walk-forward evaluation for fold(s) {missing} "
            f"(expected fold_<k>/period.json for every fold of splits.n_folds={n}, found {sorted(found)})"
        )
    extra = sorted(set(found) - set(wanted))
    if extra:
        notes.append(f"walk-forward folds {extra} are not in walk_forward.folds: ignored")
    return {k: found[k] for k in wanted}
