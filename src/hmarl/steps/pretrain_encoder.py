"""Pretrain the shared encoder per fold (masked reconstruction + next-k return forecast) and cache embeddings.

Output ``encoder`` (default ``models/encoder``)::

    checkpoints/encoder/fold_<k>.pt  encoder + pretraining heads, torch.load(weights_only=True);
                                     rebuild with hmarl.encoders.model.load_encoder
    embeddings.npy    (T, S, embed_dim) float16, walk-forward (see hmarl.encoders.train); with
                      encoder.append_sl_priors the last 9 dims are the SL cache probabilities
    source_fold.npy   (T,) int16 fold whose encoder embedded the bar (-1: none, rows are NaN)
    manifest.json     version, branches, hparams, folds, fit ranges, data fingerprint, feature_names, symbols
    metrics.json      per fold: validation losses vs naive baselines, linear probes (embedding vs raw window)
    attribution.png / attribution.json   gradient x input per feature and per lag

The SL cache must come from the same feature store (fingerprint, symbols, features), else nothing is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hmarl.config import HmarlConfig
from hmarl.data.store import FeatureStore
from hmarl.encoders.train import build_encoders
from hmarl.io import atomic_path, write_json
from hmarl.sl.cache import SLCache
from hmarl.sl.inputs import check_store
from hmarl.tracking import Tracker

log = logging.getLogger(__name__)

INPUTS = {"store": "data/features", "sl_cache": "data/sl_cache"}
OUTPUTS = {"encoder": "models/encoder"}
PARAMS = ("seed", "device", "features", "splits", "sl", "encoder")


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    store = FeatureStore.load(inputs["store"])
    check_store(store, cfg, where=str(inputs["store"]))
    cache = SLCache.load(inputs["sl_cache"])
    cache.check_matches(store, where=str(inputs["sl_cache"]))
    t0 = time.perf_counter()
    with (
        Tracker(cfg.tracking).start_run(
            "pretrain_encoder", tags={"step": "pretrain_encoder", "profile": cfg.profile}
        ) as tracker,
        atomic_path(outputs["encoder"]) as out,
    ):
        out.mkdir(parents=True)
        priors = np.asarray(cache.probs) if cfg.encoder.append_sl_priors else None
        manifest, metrics = build_encoders(store, cfg, priors, out)
        manifest["sl_cache"] = {
            "fingerprint": cache.manifest.get("fingerprint"),
            "models": {k: v["version"] for k, v in cache.manifest["models"].items()},
        }
        write_json(out / "manifest.json", manifest)
        write_json(out / "metrics.json", metrics)
        summary = {k: float(v) for k, v in metrics["mean"].items()}
        summary["seconds"] = time.perf_counter() - t0
        tracker.log_params(
            {
                "encoder": cfg.encoder.model_dump(),
                "seed": cfg.seed,
                "fingerprint": store.meta.get("fingerprint"),
            }
        )
        tracker.log_metrics(summary)
        for name in ("manifest.json", "metrics.json", "attribution.png", "attribution.json"):
            tracker.log_artifact(out / name)
    log.info(
        "pretrain_encoder: %d bars x %d symbols in %.1fs",
        store.num_bars,
        store.num_symbols,
        summary["seconds"],
    )
    return summary
