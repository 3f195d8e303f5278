"""Evaluate one walk-forward fold: the hierarchy and every baseline on the fold's test bars, at every cost.

The fold is ``ppo.fold`` (negative counts from the last). Models: ``models/symbols`` + ``models/master``
when they were trained on this fold (their manifests' ``fold``); otherwise this fold's symbol agents and
master are trained here with the training steps' procedure (:mod:`hmarl.learners.fold_models`) into
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

import torch

from hmarl.agents.data import load_training_data
from hmarl.agents.saved_master import load_master
from hmarl.config import HmarlConfig
from hmarl.errors import DataError
from hmarl.evaluation.leakage import check_unseen, training_ranges
from hmarl.evaluation.metrics import finite_or_none
from hmarl.evaluation.walk_forward import evaluate_period
from hmarl.io import write_json
from hmarl.learners.agent_folder import load_symbol_agents
from hmarl.learners.fold_models import resolve_models
from hmarl.runtime import torch_threads

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
    cfg, data, symbols = load_symbol_agents(cfg, {**inputs, "symbols": sym_dir})
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
