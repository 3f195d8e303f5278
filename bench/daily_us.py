"""The whole DAG on the shipped real data (``profile=daily_us``): wall and CPU seconds of every step.

    .venv/bin/python bench/daily_us.py [--quick] [--data ../shared/data] [--out DIR] [--set KEY.PATH=VALUE]

Runs ingest -> validate -> features -> sl_cache -> pretrain_encoder -> train_symbols -> train_master ->
stage5 (every seed) -> walk_forward (every fold) -> gate -> promote in one process, each step through the
same runner as ``hmarl step`` (DVC's stages), into a scratch folder (``--out``, default a temp folder), with
the MLflow store in that folder. ``--quick`` runs a slice that finishes within about a minute: 8 symbols,
one walk-forward fold (500 train, 120 validation, 250 test bars), tiny training budgets (a smoke test of the real-data path, not a
result). The full run is the profile as shipped (the README's "Real data: daily_us" numbers).

Baseline in the same run: the encoder pretraining cost of one step (4 bars x 143 symbols, one window each)
with the ``smoke`` profile's branch set (transformer + CNN + graph) next to the ``daily_us`` one, which is
what the profile's lighter encoder saves. CPU seconds are printed because the 2-core development box is
shared: wall time there says little. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from hmarl.config import load_config
from hmarl.encoders.model import PretrainHeads, SharedEncoder
from hmarl.runtime import set_threads
from hmarl.steps.runner import execute

ROOT = Path(__file__).resolve().parents[1]
DATA = "us_large_caps_daily_2005_2021.parquet"
BENCHMARK = "us_large_caps_daily_2005_2021_benchmark.parquet"
QUICK = [
    "universe.top_n=8",
    "splits.n_folds=1",
    "splits.train_bars=500",
    "splits.val_bars=120",
    "splits.test_bars=250",
    "splits.expanding=false",
    "walk_forward.folds=[0]",
    "walk_forward.cost_bps=[0,15]",
    "stage5.seeds=[42]",
    "stage5.total_steps=512",
    "ppo.total_steps=512",
    "ppo.num_steps=32",
    "env.num_envs=4",
    "master.total_steps=256",
    "master.num_steps=32",
    "sl.max_epochs=1",
    "sl.inner_folds=2",
    "sl.max_samples_per_epoch=5000",
    "encoder.epochs=1",
    "encoder.max_bars_per_epoch=32",
    "encoder.probe_max_samples=800",
    "encoder.attribution_bars=4",
    "agent.warm_start_steps=10",
]


def pretrain_batch_seconds(profile: str, symbols: int = 143, bars: int = 4, reps: int = 2) -> float:
    """Seconds of one pretraining step (forward, backward, AdamW) on ``bars`` bars x ``symbols`` symbols."""
    cfg = load_config(ROOT / "params.yaml", [f"profile={profile}"])
    window, features = cfg.features.window, 23
    torch.manual_seed(0)
    enc = SharedEncoder(cfg.encoder, window, features, torch.rand(symbols, symbols))
    heads = PretrainHeads(enc.learned_dim, window, features, cfg.encoder.forecast_k)
    params = list(enc.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.encoder.lr)
    x = torch.randn(bars, symbols, window, features)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        recon, forecast = heads(enc.learned(x))
        loss = recon.square().mean() + forecast.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def step_plan(cfg) -> list[tuple[str, str, dict, dict]]:
    """``(label, step, outputs, overrides)`` in DAG order, as dvc.yaml runs them."""
    plan = [(s, s, {}, {}) for s in ("ingest", "validate", "features", "sl_cache", "pretrain_encoder")]
    plan += [("train_symbols", "train_symbols", {}, {}), ("train_master", "train_master", {}, {})]
    for seed in cfg.stage5.seeds:
        plan.append((f"stage5_seed_{seed}", "stage5", {"run": f"reports/stage5/seed_{seed}"}, {"seed": seed}))
    for k in cfg.walk_forward.folds:
        out = {"evaluation": f"reports/walk_forward/fold_{k}"}
        plan.append((f"walk_forward_fold_{k}", "walk_forward", out, {"ppo.fold": k}))
    return plan + [("gate", "gate", {}, {}), ("promote", "promote", {}, {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 symbols, one fold, tiny budgets (about a minute)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder of the shipped data")
    ap.add_argument("--out", default=None, help="scratch folder (default: a temp folder, removed after)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    if not (data / DATA).exists():
        print(f"daily_us bench: {data / DATA} not found (the shipped data set); nothing run", file=sys.stderr)
        print(json.dumps({"bench": "daily_us", "skipped": True, "reason": f"{data / DATA} not found"}))
        return
    logging.basicConfig(level=logging.WARNING)
    set_threads(max(1, min(2, os.cpu_count() or 1)))
    baseline = {p: pretrain_batch_seconds(p) for p in ("smoke", "daily_us")}
    print(
        f"encoder pretraining step, 4 bars x 143 symbols: smoke branches {baseline['smoke']:.2f}s, "
        f"daily_us branches {baseline['daily_us']:.2f}s"
    )

    overrides = [
        "profile=daily_us",
        f"data.path={data / DATA}",
        f"data.benchmark_path={data / BENCHMARK}",
        *(QUICK if args.quick else []),
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory(prefix="hmarl-daily-us-") as tmp:
        work = Path(args.out or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)  # every default input/output path is relative to the working directory
        overrides.append(f"tracking.mlflow_uri=sqlite:///{work}/mlruns.db")
        cfg = load_config(ROOT / "params.yaml", overrides)
        steps, t_all, cpu_all = {}, time.perf_counter(), time.process_time()
        for label, step, outputs, extra in step_plan(cfg):
            step_cfg = load_config(
                ROOT / "params.yaml", [*overrides, *(f"{k}={v}" for k, v in extra.items())]
            )
            t0, cpu0 = time.perf_counter(), time.process_time()
            metrics = execute(step, step_cfg, None, outputs, metrics_path=None)
            steps[label] = {
                "wall_s": round(time.perf_counter() - t0, 1),
                "cpu_s": round(time.process_time() - cpu0, 1),
            }
            print(
                f"{label:24s} {steps[label]['wall_s']:8.1f}s wall {steps[label]['cpu_s']:8.1f}s CPU",
                flush=True,
            )
            if step == "gate":
                steps[label]["go"] = metrics.get("go")
        total = {
            "wall_s": round(time.perf_counter() - t_all, 1),
            "cpu_s": round(time.process_time() - cpu_all, 1),
        }
    print(f"{'total':24s} {total['wall_s']:8.1f}s wall {total['cpu_s']:8.1f}s CPU")
    print(
        json.dumps(
            {
                "bench": "daily_us",
                "quick": args.quick,
                "symbols": cfg.universe.top_n,
                "folds": len(cfg.walk_forward.folds),
                "total": total,
                "steps": steps,
                "encoder_batch_s": {
                    "smoke_branches": round(baseline["smoke"], 3),
                    "daily_us_branches": round(baseline["daily_us"], 3),
                },
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
