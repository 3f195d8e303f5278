"""CSV files for DVC plots (``plots/gate``): the report's curves as plain numeric columns.

Column names are fixed (strategy names, action names, ``mean``/``min``/``max`` across seeds), so the
plot definitions in ``dvc.yaml`` can name them; every file has a numeric x column (``step``, ``cost_bps``,
``fold``, ``bin``) and non-finite values are written empty. Every strategy of :data:`STRATEGIES` has its
column, empty when the evaluation lacks it (the benchmark of data without one).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hmarl.env.actions import ACTION_NAMES
from hmarl.evaluation.aggregate import Aggregate
from hmarl.evaluation.metrics import drawdown
from hmarl.evaluation.period import BASELINES, POLICY
from hmarl.io import atomic_path

STRATEGIES = (POLICY, *BASELINES)  # the strategy columns of equity, drawdown, cost_stress and folds


def _cell(v) -> object:
    if isinstance(v, float | np.floating):
        return f"{float(v):.8g}" if math.isfinite(v) else ""
    return v


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows([_cell(v) for v in r] for r in rows)


def _curves(path: Path, x: str, curves: Mapping[str, np.ndarray]) -> None:
    names = list(curves)
    n = len(next(iter(curves.values())))
    write_csv(path, [x, *names], [[i, *(float(curves[k][i]) for k in names)] for i in range(n)])


def seed_band(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict[str, np.ndarray]:
    """mean / min / max across seeds of (steps, values) curves, on the first seed's step grid."""
    grid = np.asarray(curves[0][0], dtype=np.float64)
    ys = np.stack([np.interp(grid, np.asarray(x, float), np.asarray(y, float)) for x, y in curves])
    return {"step": grid, "mean": ys.mean(0), "min": ys.min(0), "max": ys.max(0)}


def write_plot_csvs(
    folder: str | Path,
    agg: Aggregate,
    entropy_by_seed: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    reward_contributions: Mapping[str, float] | None = None,
) -> list[str]:
    """Write the plot files into ``folder``; returns their names."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = list(STRATEGIES) + [n for n in agg.names if n not in STRATEGIES]
    empty = np.full(len(agg.dates), math.nan)
    equity = {n: agg.equity[n] / agg.equity[n][0] if n in agg.equity else empty for n in names}
    _curves(out / "equity.csv", "step", equity)
    dd = {n: 0.0 - drawdown(agg.equity[n]) if n in agg.equity else empty for n in names}  # 0.0 -: no "-0"
    _curves(out / "drawdown.csv", "step", dd)
    _curves(out / "actions.csv", "step", {a: agg.actions[:, i] for i, a in enumerate(ACTION_NAMES)})
    stress = agg.cost_stress()
    write_csv(
        out / "cost_stress.csv",
        ["cost_bps", *names],
        [[c, *(by[n]["sharpe"] if n in by else math.nan for n in names)] for c, by in stress.items()],
    )
    write_csv(
        out / "folds.csv",
        ["fold", *names],
        [
            [i, *(m[n]["sharpe"] if n in m else math.nan for n in names)]
            for i, m in enumerate(agg.per_period.values())
        ],
    )
    sharpes = np.array([x for x in agg.symbol_sharpes.values() if math.isfinite(x)])
    counts, edges = (
        np.histogram(sharpes, bins=min(30, max(5, sharpes.size // 3))) if sharpes.size else ([], [0])
    )
    write_csv(
        out / "symbol_sharpe.csv",
        ["bin", "symbols"],
        [[float((edges[i] + edges[i + 1]) / 2), int(c)] for i, c in enumerate(counts)],
    )
    written = [
        "equity.csv",
        "drawdown.csv",
        "actions.csv",
        "cost_stress.csv",
        "folds.csv",
        "symbol_sharpe.csv",
    ]
    if entropy_by_seed:
        band = seed_band(list(entropy_by_seed.values()))
        write_csv(
            out / "entropy.csv", list(band), [list(map(float, r)) for r in zip(*band.values(), strict=True)]
        )
        written.append("entropy.csv")
    if reward_contributions:
        write_csv(
            out / "reward_components.csv",
            ["component", "contribution"],
            [[k, float(v)] for k, v in reward_contributions.items()],
        )
        written.append("reward_components.csv")
    return written
