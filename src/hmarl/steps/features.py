"""Featurize validated canonical bars into the feature store (causal features, regime, per-fold norms).

Refuses to run unless the validate step's ``summary.json`` says ``"status": "passed"`` for these very bars
(its fingerprint is the canonical data's: a re-ingest after validation is refused). The store keeps
raw features; a bar is marked tradable only if the canonical bar was tradable, it lies past
``features.warmup_bars`` and every feature is defined there. Entries of other bars are stored as 0
(:meth:`FeatureStore.normalized` maps them to 0 as well, i.e. to the train mean).

The featurization itself is :mod:`hmarl.data.market` (also what ``hmarl act`` / ``hmarl evaluate`` run on
new data).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from hmarl.config import HmarlConfig
from hmarl.data.canonical import read_canonical
from hmarl.data.features import FEATURE_NAMES
from hmarl.data.market import build_store, market_from_canonical
from hmarl.errors import StepError
from hmarl.io import atomic_path

log = logging.getLogger(__name__)

INPUTS = {"canonical": "data/canonical", "validation": "reports/validate"}
OUTPUTS = {"store": "data/features"}
PARAMS = ("features", "splits", "env")


# --------------------------------------------------------------------------- inputs
def require_passed_validation(folder: Path, fingerprint: str | None = None) -> dict:
    """The validate step's summary; StepError unless its status is ``passed`` for data of ``fingerprint``."""
    path = Path(folder) / "summary.json"
    if not path.exists():
        raise StepError(f"features: validation summary {path} not found; run the validate step first")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StepError(f"features: validation summary {path} is not valid JSON ({exc})") from None
    status = summary.get("status") if isinstance(summary, dict) else None
    if status != "passed":
        raise StepError(
            f"features: refusing unvalidated data: {path} has status {status!r} (need 'passed'); "
            "fix the data or the validation thresholds and re-run validate"
        )
    validated = summary.get("fingerprint")
    if fingerprint is not None and validated != fingerprint:
        raise StepError(
            f"features: refusing data that was not validated: {path} passed data of fingerprint "
            f"{str(validated)[:12]}..., the canonical data now has {fingerprint[:12]}... (re-ingested after "
            "validation?); re-run validate"
        )
    return summary


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    t0 = time.perf_counter()
    folder = inputs["canonical"]
    canon = read_canonical(folder)  # checks the bars against meta.json's fingerprint
    require_passed_validation(inputs["validation"], canon.meta.get("fingerprint"))
    market = market_from_canonical(canon, source=str(folder))
    t1 = time.perf_counter()
    store = build_store(cfg, market)
    t2 = time.perf_counter()
    nonfinite = int((~np.isfinite(store.features)).sum() + (~np.isfinite(store.regime)).sum())
    if nonfinite:  # a bug, not bad data: never hand NaN/inf downstream
        raise StepError(f"features: {nonfinite} non-finite values in the store")
    with atomic_path(outputs["store"]) as tmp:
        store.save(tmp)
    log.info("features: %d bars x %d symbols in %.2fs", store.num_bars, store.num_symbols, t2 - t1)
    return {
        "bars": float(store.num_bars),
        "symbols": float(store.num_symbols),
        "features": float(len(FEATURE_NAMES)),
        "regime_features": float(store.regime.shape[1]),
        "folds": float(store.norm_mean.shape[0]),
        "usable_fraction": float(store.tradable.mean()),
        "masked_bars": float((~market.tradable).sum()),
        "nonfinite": float(nonfinite),
        "load_seconds": t1 - t0,
        "featurize_seconds": t2 - t1,
        "seconds": time.perf_counter() - t0,
    }
