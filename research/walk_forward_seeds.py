"""The daily_us walk-forward for other seeds, and the table over seeds (mean ± std).

    .venv/bin/python research/walk_forward_seeds.py run --upstream DIR --seed 1337 [--set KEY.PATH=VALUE ...]
    .venv/bin/python research/walk_forward_seeds.py table --upstream DIR --seed 42 --seed 1337 --seed 9001

``DIR`` is a ``bench/daily_us.py --out DIR`` run (seed 42: its reports/walk_forward/fold_k are that seed's
folds). ``run`` trains and evaluates every fold's symbol agents and master with ``seed`` on the same upstream
(features, SL cache, encoder: one per data, not per seed) through the walk_forward step, into
``DIR/seeds/seed_<seed>/fold_<k>``. ``--config NAME`` runs a chosen research configuration (its overrides,
every seed including 42) into ``DIR/configs/NAME/seed_<seed>/fold_<k>``; the overrides are kept in
``DIR/configs/NAME/overrides.json`` and ``table --config NAME`` reads them back. ``table`` aggregates each seed's folds (the gate's aggregation) and prints
every strategy's annual return, excess Sharpe and max drawdown as mean ± std over the seeds; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from trial import daily_us_overrides  # research/ is the script's folder, first on sys.path

from hmarl.config import load_config
from hmarl.evaluation.aggregate import aggregate, mlflow_trial_sharpes
from hmarl.evaluation.gate import evaluate_gate, gate_values
from hmarl.evaluation.period import PeriodEvaluation
from hmarl.steps.runner import execute

ROOT = Path(__file__).resolve().parents[1]
SHOWN = ("policy", "no_master", "sl_rule", "buy_hold", "vol_target", "trend_filter", "benchmark")


def config(args: argparse.Namespace, seed: int, extra: list[str] = ()):
    return load_config(
        ROOT / "params.yaml",
        [
            *daily_us_overrides(Path(args.upstream) / "mlruns.db"),
            f"seed={seed}",
            *args.overrides,
            *extra,
        ],
    )


def fold_dirs(up: Path, seed: int, folds: list[int], name: str | None = None) -> list[Path]:
    if name:
        base = up / "configs" / name / f"seed_{seed}"
    else:
        base = up / "reports" / "walk_forward" if seed == 42 else up / "seeds" / f"seed_{seed}"
    return [base / f"fold_{k}" for k in folds]


def config_overrides(args: argparse.Namespace) -> None:
    """A named configuration's overrides: written at its first run, read back (and checked) after."""
    if not args.config:
        return
    path = Path(args.upstream).resolve() / "configs" / args.config / "overrides.json"
    if path.exists():
        kept = json.loads(path.read_text())
        if args.overrides and args.overrides != kept:
            raise SystemExit(f"{path}: configuration {args.config} was run with other overrides: {kept}")
        args.overrides = kept
    elif args.command == "run":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(args.overrides, indent=1))


def run(args: argparse.Namespace) -> None:
    up = Path(args.upstream).resolve()
    os.chdir(up)  # the steps' relative default paths (checkpoints/) stay in the run's folder
    folds = config(args, args.seed[0]).walk_forward.folds
    first_fold = up / "reports" / "walk_forward" / f"fold_{folds[0]}"
    for k, out in zip(folds, fold_dirs(up, args.seed[0], folds, args.config), strict=True):
        if (out / "period.json").exists():
            continue
        # the symbols/master inputs must be of another fold, so that the step trains this fold's models
        other = first_fold if k != folds[0] else up / "models"
        sym = other / "symbols"
        ins = {
            "store": up / "data/features",
            "sl_cache": up / "data/sl_cache",
            "encoder": up / "models/encoder",
            "symbols": sym,
            "master": other / "master",
        }
        cfg = config(args, args.seed[0], [f"ppo.fold={k}"])
        execute("walk_forward", cfg, {n: str(p) for n, p in ins.items()}, {"evaluation": str(out)})
        print(f"seed {args.seed[0]} fold {k} done", flush=True)


def table(args: argparse.Namespace) -> None:
    up = Path(args.upstream).resolve()
    per_seed, gates, stress = {}, {}, {}
    for seed in args.seed:
        cfg = config(args, seed)
        periods = [PeriodEvaluation.load(d) for d in fold_dirs(up, seed, cfg.walk_forward.folds, args.config)]
        notes: list[str] = []  # the deflated Sharpe counts every trial of the configuration's tracking store
        agg = aggregate(periods, cfg, mlflow_trial_sharpes(cfg, notes))
        per_seed[seed] = agg.metrics
        gates[seed] = seed_gate(agg, cfg)
        for row in agg.stress_windows:  # (window, strategy) -> per seed (total return, max drawdown)
            if row["name"] in SHOWN and row.get("total_return") is not None:
                key = (row["window"], row["name"])
                stress.setdefault(key, []).append((row["total_return"], row["max_drawdown"]))
    rows = {}
    print("| strategy | annual | excess Sharpe | max DD |")
    print("| --- | --- | --- | --- |")
    for name in SHOWN:
        if not all(name in m for m in per_seed.values()):
            continue
        vals = {
            k: np.array([m[name][k] for m in per_seed.values()])
            for k in ("annual_return", "sharpe", "max_drawdown")
        }
        rows[name] = {k: mean_std(v) for k, v in vals.items()}
        a, s, d = (rows[name][k] for k in ("annual_return", "sharpe", "max_drawdown"))
        print(f"| {name} | {a[0]:.1%} ± {a[1]:.1%} | {s[0]:.2f} ± {s[1]:.2f} | {d[0]:.1%} ± {d[1]:.1%} |")
    print("\n| stress window | strategy | total return | max DD |")
    print("| --- | --- | --- | --- |")
    for (window, name), vals in stress.items():
        (r, r_sd), (d, d_sd) = (mean_std(np.array(v)) for v in zip(*vals, strict=True))
        print(f"| {window} | {name} | {r:.1%} ± {r_sd:.1%} | {d:.1%} ± {d_sd:.1%} |")
    print("\n| seed | " + " | ".join(GATE_SHOWN) + " | verdict without Stage 5 |")
    print("| --- |" + " --- |" * (len(GATE_SHOWN) + 1))
    for seed, g in gates.items():
        cells = " | ".join(f"{g['values'].get(k, float('nan')):.3f}" for k in GATE_SHOWN)
        print(f"| {seed} | {cells} | {'pass' if not g['failing'] else 'fail: ' + ', '.join(g['failing'])} |")
    windows = {f"{w}/{n}": v for (w, n), v in stress.items()}
    print(
        json.dumps(
            {"seeds": args.seed, "config": args.config, "mean_std": rows, "gate": gates, "stress": windows}
        )
    )


GATE_SHOWN = (
    "symbol_walk_forward_sharpe",
    "master_drawdown_reduction",
    "value_excess_sharpe_vs_buy_hold",
    "value_matched_vol_return_vs_buy_hold",
    "value_excess_annual_return",
    "deflated_sharpe",
    "pbo",
)


WALK_FORWARD_TIERS = ("learning", "master", "value", "strategic")  # stage5 / stability read the Stage 5 seeds


def seed_gate(agg, cfg) -> dict:
    """The gate's walk-forward values of one seed and the blocking criteria they fail (the Stage 5 and
    stability tiers read Stage 5 runs, which a research configuration does not have: left out)."""
    values = {k: v for k, v in gate_values(agg, {}, cfg).items() if np.isfinite(v)}
    verdict = evaluate_gate(values, cfg.gate)
    failing = [
        c.name for c in verdict.criteria if c.blocking and not c.passed and c.tier in WALK_FORWARD_TIERS
    ]
    pol = agg.metrics["policy"]
    values.update(deflated_sharpe=float(pol["deflated_sharpe"]), pbo=float(pol["pbo"]))
    return {"values": values, "failing": failing}


def mean_std(v: np.ndarray) -> list[float]:
    return [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("run", "table"))
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--seed", type=int, action="append", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--config", default=None, help="a named research configuration (see the docstring)")
    args = ap.parse_args()
    config_overrides(args)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
