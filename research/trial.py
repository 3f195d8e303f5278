"""One research trial on the shipped daily data, judged on VALIDATION bars only (issue 19's protocol).

    .venv/bin/python research/trial.py --upstream DIR --name NAME [--fold K ...] [--set KEY.PATH=VALUE ...]

``DIR`` holds the upstream outputs of a ``daily_us`` run (``bench/daily_us.py --out DIR``: data/features,
data/sl_cache, models/encoder). For each fold K (default 0 and 3) the trial trains that fold's symbol agents
and master with the overrides (the same steps as the DAG, through the same runner), then evaluates the
hierarchy and every baseline on the fold's validation bars -- the bars after its training bars and before
its test bars, which no setting may be chosen on otherwise. The test folds are not evaluated here: a
configuration reaches them only through the full ``daily_us`` walk-forward, once it is chosen.

Each trial is an MLflow run of the experiment ``hmarl-research`` in ``--tracking`` (default
research/trials.db): params = the overrides, metrics = per fold and mean over folds (policy, no-master,
buy-and-hold, volatility-targeted equal weight: annual return, excess Sharpe, max drawdown; the policy's
exposure funnel). The training steps' own runs land in the same store, so the deflated Sharpe of a later
walk-forward over it counts every trial. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.saved_master import load_master
from hmarl.config import load_config
from hmarl.evaluation.walk_forward import evaluate_period
from hmarl.learners.agent_folder import load_symbol_agents, symbol_agent_dir
from hmarl.runtime import torch_threads
from hmarl.steps.runner import execute
from hmarl.tracking.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATA_FILE = DATA / "us_large_caps_daily_2005_2021.parquet"
BENCHMARK_FILE = DATA / "us_large_caps_daily_2005_2021_benchmark.parquet"
ARMS = ("policy", "no_master", "buy_hold", "vol_target", "trend_filter", "sl_rule")
METRICS = ("annual_return", "sharpe", "max_drawdown", "exposure")
FUNNEL = (
    "exposure",
    "ceiling",
    "slot_use",
    "sizing",
    "held_symbols",
    "pick_buy",
    "pick_sell",
    "holding_bars",
    "rebalance_turnover",
)


def daily_us_overrides(tracking_db: Path) -> list[str]:
    """The daily_us profile on the shipped data, tracked in the SQLite store ``tracking_db``."""
    return [
        "profile=daily_us",
        f"data.path={DATA_FILE}",
        f"data.benchmark_path={BENCHMARK_FILE}",
        f"tracking.mlflow_uri=sqlite:///{Path(tracking_db).resolve()}",
    ]


def overrides(args: argparse.Namespace, fold: int | None = None) -> list[str]:
    out = [*daily_us_overrides(args.tracking), *args.overrides]
    return out + ([f"ppo.fold={fold}"] if fold is not None else [])


def run_fold(args: argparse.Namespace, fold: int, work: Path) -> dict[str, float]:
    """Train fold ``fold``'s agents and master with the trial's overrides; evaluate on its validation bars."""
    cfg = load_config(ROOT / "params.yaml", overrides(args, fold))
    up = Path(args.upstream).resolve()
    upstream = {
        "store": up / "data/features",
        "sl_cache": up / "data/sl_cache",
        "encoder": up / "models/encoder",
    }
    sym, master = work / f"fold_{fold}" / "symbols", work / f"fold_{fold}" / "master"
    if not (sym / "agent.pt").exists():
        execute("train_symbols", cfg, {k: str(v) for k, v in upstream.items()}, {"model": str(sym)})
    if not (master / "master.pt").exists():
        ins = {**{k: str(v) for k, v in upstream.items()}, "symbols": str(sym)}
        execute("train_master", cfg, ins, {"model": str(master)})
    cfg, data, symbols = load_symbol_agents(cfg, {**upstream, "symbols": symbol_agent_dir(sym, master)})
    agent_master, _ = load_master(master / "master.pt", torch.device("cpu"))
    market, tables = data.market(cfg, torch.device("cpu")), data.tables(cfg, torch.device("cpu"))
    with torch_threads(cfg.ppo.threads):
        period = evaluate_period(cfg, market, tables, symbols, agent_master, data.fold.val, f"val_{fold}")
    out: dict[str, float] = {"first_bar": float(data.fold.val[0]), "last_bar": float(data.fold.val[1])}
    for arm, values in period.metrics().items():
        if arm in ARMS:
            out.update({f"{arm}_{m}": float(values[m]) for m in METRICS if m in values})
    funnel = period.info["exposure"]["policy"]
    out.update({f"funnel_{k}": float(funnel[k]) for k in FUNNEL})
    out["dates"] = f"{period.dates[0][:10]} -> {period.dates[-1][:10]}"  # type: ignore[assignment]
    return out


def reuse_symbol_agents(source: Path, work: Path, folds: list[int]) -> None:
    """Copy ``source``'s trained symbol agents of ``folds`` into ``work`` (folds it lacks train here)."""
    for k in folds:
        src, dst = source / f"fold_{k}" / "symbols", work / f"fold_{k}" / "symbols"
        if (src / "agent.pt").exists() and not dst.exists():
            shutil.copytree(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="folder of a daily_us run (bench/daily_us.py --out)")
    ap.add_argument("--name", required=True, help="the trial's name (its MLflow run name)")
    ap.add_argument("--fold", type=int, action="append", default=None, help="folds (default 0 and 3)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--tracking", default=str(ROOT / "research" / "trials.db"))
    ap.add_argument("--work", default=None, help="where the trial's models go (default research/runs/NAME)")
    ap.add_argument(
        "--symbols-from",
        default=None,
        metavar="TRIAL",
        help="reuse that trial's symbol agents (research/runs/TRIAL/fold_K/symbols) where it has them: a "
        "master-only trial; logged as the param symbols_from",
    )
    args = ap.parse_args()
    if not DATA_FILE.exists():
        print(json.dumps({"trial": args.name, "skipped": True, "reason": f"{DATA} not found"}))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    work = Path(args.work or ROOT / "research" / "runs" / args.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # relative default paths (checkpoints, runs/) stay inside the trial's folder
    folds, t0 = args.fold or [0, 3], time.perf_counter()
    if args.symbols_from:
        reuse_symbol_agents(work.parent / args.symbols_from, work, folds)
    per_fold = {k: run_fold(args, k, work) for k in folds}
    numeric = [{k: v for k, v in r.items() if isinstance(v, float)} for r in per_fold.values()]
    mean = {k: float(np.mean([r[k] for r in numeric])) for k in numeric[0] if not k.endswith("_bar")}
    cfg = load_config(ROOT / "params.yaml", overrides(args))
    tracker = Tracker(cfg.tracking.model_copy(update={"experiment": "hmarl-research"}))
    with tracker.start_run(args.name, tags={"bars": "validation", "folds": ",".join(map(str, folds))}):
        tracker.log_params(
            {
                "overrides": " ".join(args.overrides) or "(profile as shipped)",
                "symbols_from": args.symbols_from or "(trained here)",
            }
        )
        tracker.log_metrics({f"val/{k}": v for k, v in mean.items()})
        for k, r in zip(folds, numeric, strict=True):
            tracker.log_metrics({f"val_fold{k}/{m}": v for m, v in r.items()})
    result = {
        "trial": args.name,
        "overrides": args.overrides,
        "symbols_from": args.symbols_from,
        "folds": {k: r for k, r in per_fold.items()},
        "mean": mean,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (work / "trial.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
