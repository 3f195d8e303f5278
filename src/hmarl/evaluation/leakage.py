"""What the walk-forward evaluation checks before it evaluates a fold: every bar range that a model behind the
evaluated bars learned from or was selected on (the fold's train/validation bars, the agents' recorded
training folds, the normalization statistics, the SL models and encoders that produced the test bars'
inputs, labels' look-ahead included) must be disjoint from the test bars."""

from __future__ import annotations

import numpy as np

from hmarl.agents.data import TrainingData
from hmarl.config import HmarlConfig
from hmarl.data.splits import folds_for
from hmarl.errors import DataError
from hmarl.sl.cache import NONE


def training_ranges(data: TrainingData, manifests: dict[str, dict], horizon: int) -> dict[str, list]:
    """Every bar range a model behind the fold's test bars learned from or was selected on, ``[lo, hi)``
    with labels' look-ahead (``horizon``) added to learned ranges."""
    k, (lo, hi) = data.fold.index, data.fold.test

    def reach(ranges) -> list[list[int]]:
        return [[int(a), int(b) + horizon] for a, b in ranges]

    out = {
        f"fold {k} train": reach([data.fold.train]),
        f"fold {k} validation": reach([data.fold.val]),
        f"feature normalization of fold {k}": [list(data.store.meta["folds"][k]["train"])],
    }
    for role, m in manifests.items():  # the folds of the config each model was trained with
        fold = folds_for(HmarlConfig.model_validate(m["config"]), data.store.num_bars)[m["fold"]]
        out[f"{role} (trained on fold {fold.index})"] = reach([fold.train, fold.val])
    bars = np.arange(lo, hi)
    sl = data.sl
    fits = {(f["fold"], f["split"]): f for f in sl.manifest["fits"]}
    used = {(int(f), int(s)) for f, s in zip(sl.source_fold[bars], sl.source_split[bars], strict=True)}
    for f, s in sorted(used):
        if f != NONE:
            fit = fits[(f, s)]
            out[f"SL model fold {f} split {s}"] = reach(fit["fit_ranges"]) + [list(fit["select_range"])]
    enc_fold = np.load(data.encoder_dir / "source_fold.npy")[bars]
    for fit in data.encoder_manifest["fits"]:
        if fit["fold"] in set(enc_fold.tolist()):
            out[f"encoder fold {fit['fold']}"] = reach(fit["fit_ranges"]) + (
                [list(fit["select_range"])] if fit["select_range"] else []
            )
    return out


def check_unseen(bars: tuple[int, int], ranges: dict[str, list], where: str) -> None:
    lo, hi = bars
    seen = [f"{name} {r}" for name, rs in ranges.items() for r in rs if r[0] < hi and lo < r[1]]
    if seen:
        raise DataError(f"{where}: the evaluated bars [{lo}, {hi}) overlap bars models learned from: {seen}")
