"""Evaluate one walk-forward fold: the hierarchy and every baseline on the fold's test bars, at every cost.

The fold is ``ppo.fold`` (negative counts from the last). Models: ``models/symbols`` + ``models/master``
when they were trained on this fold (their manifests' ``fold``); otherwise this fold's symbol agents and
master are trained here with the same procedure (``train_symbols.run`` then ``train_master.run``) into
``<out>/symbols`` and ``<out>/master``. A master folder holding ``symbols/agent.pt`` (symbol agents
fine-tuned with the master) provides the symbol agents. Models of other data are refused (DataError).

Before evaluating, every bar range that a model behind the evaluated bars learned from or was selected on
(the fold's train/validation bars, the agents' recorded training folds, the normalization statistics, the
SL models and encoders that produced the test bars' inputs, labels' look-ahead included) is checked to be
disjoint from the test bars; the ranges are recorded in ``period.json`` (``info.training_ranges``).

Output ``evaluation`` (default ``reports/walk_forward/fold_<k>``): ``period.json`` + ``series.npz``
(:class:`hmarl.evaluation.period.PeriodEvaluation`, label ``fold_<k>``), ``summary.json``, and
``symbols/`` / ``master/`` when trained here. Metrics: sharpe, total_return, max_drawdown of the policy
and every baseline at the base cost (``<name>_<metric>``), plus fold facts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.data import TrainingData, load_training_data
from hmarl.agents.saved_master import load_master
from hmarl.config import HmarlConfig
from hmarl.data.splits import folds_for
from hmarl.errors import DataError
from hmarl.evaluation.metrics import finite_or_none
from hmarl.evaluation.walk_forward import evaluate_period
from hmarl.io import write_json
from hmarl.safe_load import read_document
from hmarl.sl.cache import NONE
from hmarl.sl.train import torch_threads
from hmarl.steps import train_master, train_symbols

log = logging.getLogger(__name__)

INPUTS = {
    "store": "data/features",
    "sl_cache": "data/sl_cache",
    "encoder": "models/encoder",
    "symbols": "models/symbols",
    "master": "models/master",
}
OUTPUTS = {"evaluation": "reports/walk_forward/fold_0"}
PARAMS = ("seed", "device", "features", "agent", "ppo", "master", "env", "reward", "walk_forward")
METRICS = ("sharpe", "total_return", "max_drawdown")


def model_manifest(folder: Path, weights: str, data: TrainingData) -> dict:
    """The manifest of a trained-model folder, refused unless it describes this data."""
    if not (folder / weights).exists() or not (folder / "manifest.json").exists():
        raise DataError(f"{folder}: not a trained-model folder ({weights} or manifest.json missing)")
    manifest = read_document(folder / "manifest.json")
    for key, want in data.identity.items():
        if key != "fold" and manifest.get(key) != want:
            raise DataError(
                f"{folder}: trained on other data ({key} {_short(manifest.get(key))} differs from the "
                f"feature store's {_short(want)}); retrain it on this data"
            )
    return manifest


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_models(
    cfg: HmarlConfig, data: TrainingData, inputs: dict[str, Path], out: Path
) -> tuple[Path, Path, dict]:
    """``(symbol agents folder, master folder, {folder role: manifest})`` of this fold, training what is
    missing into ``out``."""
    k = data.fold.index
    sym_dir, master_dir = Path(inputs["symbols"]), Path(inputs["master"])
    sym = model_manifest(sym_dir, "agent.pt", data)
    master = model_manifest(master_dir, "master.pt", data)
    upstream = {key: inputs[key] for key in ("store", "sl_cache", "encoder")}
    if sym["fold"] != k:
        log.info("walk_forward: %s holds fold %s; training fold %d here", sym_dir, sym["fold"], k)
        sym_dir = out / "symbols"
        train_symbols.run(cfg, upstream, {"model": sym_dir})
        sym = model_manifest(sym_dir, "agent.pt", data)
    if sym_dir != Path(inputs["symbols"]) or master["fold"] != k:
        master_dir = out / "master"
        train_master.run(cfg, {**upstream, "symbols": sym_dir}, {"model": master_dir})
        master = model_manifest(master_dir, "master.pt", data)
    return train_master.symbol_agent_dir(sym_dir, master_dir), master_dir, {"symbols": sym, "master": master}


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


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    data = load_training_data(cfg, inputs)  # normalizes ppo.fold, checks store / SL cache / encoder
    k, bars = data.fold.index, data.fold.test
    out = Path(outputs["evaluation"])
    out.mkdir(parents=True, exist_ok=True)
    sym_dir, master_dir, manifests = resolve_models(cfg, data, inputs, out)
    ranges = training_ranges(data, manifests, cfg.features.label_horizon)
    check_unseen(bars, ranges, f"fold {k}")

    device = torch.device("cuda" if cfg.device == "cuda" else "cpu")
    if cfg.device == "auto" and torch.cuda.is_available():
        device = torch.device("cuda")
    # the tables must match how the symbol agents were trained (cached embeddings or windows)
    cfg, data, symbols = train_master.load_inputs(cfg, {**inputs, "symbols": sym_dir})
    master, master_meta = load_master(master_dir / "master.pt", device)
    if master_meta["fold"] != k:
        raise DataError(f"{master_dir}: master trained on fold {master_meta['fold']}, evaluating fold {k}")
    info = {
        "fold": data.fold.to_dict(),
        "models": {"symbols": str(sym_dir), "master": str(master_dir)},
        "trained_here": {"symbols": sym_dir.is_relative_to(out), "master": master_dir.is_relative_to(out)},
        "training_ranges": ranges,
    }
    market, tables = data.market(cfg, device), data.tables(cfg, device)
    with torch_threads(cfg.ppo.threads):  # small batched ops: extra threads only contend
        period = evaluate_period(cfg, market, tables, symbols.to(device), master, bars, f"fold_{k}", info)
    period.save(out)
    metrics: dict[str, float] = {
        "fold": float(k),
        "num_bars": float(bars[1] - bars[0] - 1),
        "bars_per_year": float(period.bars_per_year),
        "trained_symbols": float(info["trained_here"]["symbols"]),
        "trained_master": float(info["trained_here"]["master"]),
    }
    for name, values in period.metrics().items():
        for m in METRICS:
            metrics[f"{name}_{m}"] = float(values[m])
    write_json(out / "summary.json", {key: finite_or_none(v) for key, v in metrics.items()})
    log.info(
        "walk_forward fold %d: Sharpe %s",
        k,
        {n: round(metrics[f"{n}_sharpe"], 2) for n in period.base},  # the benchmark only when present
    )
    return metrics
