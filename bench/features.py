"""Time ingest + validate + featurize of the 150-symbol x 4,103-day real set (or a synthetic set of
the same size when ../shared/data is absent). Ends with one JSON line.

    python bench/features.py [--quick] [--data PATH --benchmark PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hmarl.config import load_config
from hmarl.data.store import FeatureStore
from hmarl.steps.runner import execute

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repetition (the default is best of 3)")
    ap.add_argument("--data", default=str(SHARED / "us_large_caps_daily_2005_2021.parquet"))
    ap.add_argument("--benchmark", default=str(SHARED / "us_large_caps_daily_2005_2021_benchmark.parquet"))
    args = ap.parse_args()

    if Path(args.data).exists():
        source = "real"
        overrides = [
            "data.source=path",
            f"data.path={args.data}",
            f"data.benchmark_path={args.benchmark}",
            "universe.top_n=150",
        ]
    else:  # same shape, synthetic
        source = "synthetic"
        overrides = ["synthetic.num_symbols=150", "synthetic.num_bars=4103", "universe.top_n=150"]
    cfg = load_config(REPO / "params.yaml", ["profile=full", *overrides])

    # GE's import (2-3 s, once per process) is not part of the work; load it before timing.
    import great_expectations  # noqa: F401

    timings = []
    for _ in range(1 if args.quick else 3):
        with tempfile.TemporaryDirectory() as tmp:
            outs = {
                "ingest": {"canonical": f"{tmp}/canonical"},
                "validate": {"report": f"{tmp}/validate"},
                "features": {"store": f"{tmp}/features"},
            }
            ins = {
                "validate": {"canonical": f"{tmp}/canonical"},
                "features": {"canonical": f"{tmp}/canonical", "validation": f"{tmp}/validate"},
            }
            stage = {}
            for step in ("ingest", "validate", "features"):
                t0 = time.perf_counter()
                execute(step, cfg, ins.get(step), outs[step])
                stage[step] = time.perf_counter() - t0
            store = FeatureStore.load(f"{tmp}/features")
            timings.append(stage)
            print(
                f"{source}: {store.num_symbols} symbols x {store.num_bars} bars: "
                + ", ".join(f"{k} {v:.2f}s" for k, v in stage.items())
                + f", total {sum(stage.values()):.2f}s"
            )
    best = min(timings, key=lambda s: sum(s.values()))
    print(
        json.dumps(
            {
                "bench": "features",
                "seconds": round(sum(best.values()), 3),
                "symbols": store.num_symbols,
                "bars": store.num_bars,
                "source": source,
                "stage_seconds": {k: round(v, 3) for k, v in best.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
