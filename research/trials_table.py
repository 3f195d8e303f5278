"""Trials side by side: per trial (``research/runs/NAME/trial.json``) and strategy, the validation excess
Sharpe (mean over the trial's folds, and per fold), annual return, max drawdown (mean / worst fold) and
exposure; the last line is one JSON object.

    .venv/bin/python research/trials_table.py NAME [NAME ...] [--runs research/runs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("policy", "no_master", "buy_hold", "vol_target", "trend_filter")


def summarize(trial: dict) -> dict[str, dict]:
    """Per strategy: the means over the trial's folds (and the per-fold Sharpe)."""
    folds = [trial["folds"][k] for k in sorted(trial["folds"], key=int)]
    out = {}
    for arm in ARMS:
        sharpe = [f[f"{arm}_sharpe"] for f in folds]
        dd = [f[f"{arm}_max_drawdown"] for f in folds]
        out[arm] = {
            "sharpe": float(np.mean(sharpe)),
            "sharpe_per_fold": sharpe,
            "annual_return": float(np.mean([f[f"{arm}_annual_return"] for f in folds])),
            "max_drawdown_mean": float(np.mean(dd)),
            "max_drawdown_worst": float(np.max(dd)),
            "exposure": float(np.mean([f.get(f"{arm}_exposure", np.nan) for f in folds])),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--runs", default=str(ROOT / "research" / "runs"))
    args = ap.parse_args()
    table = {}
    for name in args.names:
        path = Path(args.runs) / name / "trial.json"
        if not path.exists():
            print(f"{name}: no trial.json (running, or not run)")
            continue
        trial = json.loads(path.read_text())
        table[name] = summarize(trial)
        print(f"== {name} (folds {', '.join(sorted(trial['folds'], key=int))})")
        for arm, r in table[name].items():
            folds = " ".join(f"{x:+.2f}" for x in r["sharpe_per_fold"])
            print(
                f"  {arm:12s} Sharpe {r['sharpe']:+.3f} [{folds}]  annual {r['annual_return']:+.3f}  "
                f"max DD {r['max_drawdown_mean']:.3f} / {r['max_drawdown_worst']:.3f}  "
                f"exposure {r['exposure']:.2f}"
            )
    print(json.dumps(table))


if __name__ == "__main__":
    main()
