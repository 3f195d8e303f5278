"""Train the MLP / LSTM / GRU direction classifiers per fold and write the honest SL probability cache.

Output ``cache`` (default ``data/sl_cache``), see :mod:`hmarl.sl.cache` for the full layout::

    probs.npy (T, S, 9) float32 · source_fold.npy / source_split.npy (T,) int16 · manifest.json
    metrics.json · checkpoints/<model>/fold_<k>.pt · checkpoints/<model>/fold_<k>_inner_<j>.pt

Checkpoints open with ``torch.load(path, weights_only=True)``; :func:`hmarl.sl.models.load_checkpoint`
rebuilds the model and refuses one trained on another feature list. A store that does not fit the params
(feature list, window, folds, fingerprint missing) fails before anything is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.data.store import FeatureStore
from hmarl.io import atomic_path, write_json
from hmarl.runtime import torch_threads
from hmarl.sl.inputs import check_store
from hmarl.sl.train import build_sl_cache, summary_metrics
from hmarl.tracking import Tracker

log = logging.getLogger(__name__)

INPUTS = {"store": "data/features"}
OUTPUTS = {"cache": "data/sl_cache"}
PARAMS = ("seed", "device", "features", "splits", "sl")


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    store = FeatureStore.load(inputs["store"])
    check_store(store, cfg, where=str(inputs["store"]))
    t0 = time.perf_counter()
    with (
        Tracker(cfg.tracking).start_run(
            "sl_cache", tags={"step": "sl_cache", "profile": cfg.profile}
        ) as tracker,
        atomic_path(outputs["cache"]) as out,
    ):
        out.mkdir(parents=True)
        with torch_threads(cfg.sl.num_threads):
            cache, metrics = build_sl_cache(store, cfg, out / "checkpoints")
        cache.save(out)
        write_json(out / "metrics.json", metrics)
        summary = summary_metrics(metrics)
        summary["seconds"] = time.perf_counter() - t0
        tracker.log_params(
            {"sl": cfg.sl.model_dump(), "seed": cfg.seed, "fingerprint": store.meta.get("fingerprint")}
        )
        tracker.log_metrics(summary)
        tracker.log_artifact(out / "manifest.json")
        tracker.log_artifact(out / "metrics.json")
    log.info("sl_cache: %d bars x %d symbols in %.1fs", store.num_bars, store.num_symbols, summary["seconds"])
    return summary
