"""One evaluated period: the policy and every baseline run over the same bars, at every cost level.

The walk-forward step writes one per fold, ``hmarl evaluate`` one per dataset; the gate and the report
read them back and concatenate folds (:mod:`hmarl.evaluation.aggregate`). On disk a period is a folder::

    period.json   label, bar range, dates, bars_per_year, symbols, base cost, cost levels, names,
                  risk_free (how the rate was set), info
    series.npz    <cost>__<name>__<field> arrays of every PolicySeries, plus ``actions`` and
                  ``symbol_returns`` of the policy at the base cost and ``risk_free`` (the per-bar rate)

Every Sharpe / Sortino of a period is in excess of its ``risk_free`` per-bar rate (what idle cash earned
in the simulator, ``env.cash_rate``). A period written before the rate existed reads back with rate 0.

Names: :data:`POLICY` is the evaluated hierarchy (symbol agents + master); :data:`BASELINES` are judged on
the same bars with the same costs (the benchmark series pays none: it is the market, not a strategy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmarl.errors import DataError
from hmarl.evaluation.metrics import performance_metrics
from hmarl.io import atomic_path, read_json, write_json

POLICY = "policy"  # symbol agents under the trained master (greedy), the model that is promoted
BASELINES = (
    "symbol_agents",  # the same symbol agents under their training directive (ppo.directive), no master
    "no_master",  # the same symbol agents under the fixed neutral directive (env.master.default)
    "buy_hold",  # equal-weight buy-and-hold of every symbol, entry costs charged
    "vol_target",  # equal weight scaled to a 15 % volatility target, at most fully invested (passive.py)
    "trend_filter",  # equal weight only while the equal-weight index is above its 200-bar average
    "benchmark",  # the benchmark series (e.g. SPY), no costs; absent when the data has no benchmark
    "sl_rule",  # the SL-only rule: buy when P(up) > P(down), sell when P(down) > P(up)
    "random",  # the masked random policy (mean of walk_forward.eval_envs accounts)
)
FIELDS = ("equity", "turnover", "costs", "exposure")


@dataclass
class PolicySeries:
    equity: np.ndarray  # (T + 1,) portfolio value at each close, starting with the initial equity
    turnover: np.ndarray  # (T,) traded notional in the bar / equity at its start
    costs: np.ndarray  # (T,) commission + slippage paid in the bar, currency
    exposure: np.ndarray  # (T,) gross position value / equity at the bar's close

    def __post_init__(self) -> None:
        self.equity = np.asarray(self.equity, dtype=np.float64)
        for name in FIELDS[1:]:
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != (self.equity.shape[0] - 1,):
                raise DataError(f"{name}: shape {a.shape}, expected ({self.equity.shape[0] - 1},) per bar")
            setattr(self, name, a)

    def metrics(self, bars_per_year: float, risk_free=None) -> dict[str, float]:
        """Performance metrics; Sharpe / Sortino in excess of ``risk_free`` (per-bar rate, None: 0)."""
        return performance_metrics(
            self.equity, bars_per_year, self.turnover, self.costs, self.exposure, risk_free
        )


@dataclass
class PeriodEvaluation:
    label: str  # "fold_2", or the dataset's name
    bars: tuple[int, int]  # [lo, hi) on the feature store's bar axis (equity points lo .. hi - 1)
    dates: list[str]  # T + 1 ISO timestamps, one per equity point
    bars_per_year: float
    symbols: list[str]
    cost_bps: float  # the base round-trip commission (env.commission_bps_round_trip)
    series: dict[float, dict[str, PolicySeries]]  # cost level (bps) -> name -> series; base level included
    actions: np.ndarray  # (T, 7) share of each executed action of the policy per step (base cost)
    symbol_returns: np.ndarray  # (T, S) policy P&L of each symbol in the bar / equity at its start
    info: dict = field(default_factory=dict)  # JSON-able extras: training summaries, directive counts, ...
    risk_free: np.ndarray | None = None  # (T,) per-bar risk-free rate (cash rate of each step); None: 0
    risk_free_label: str = "constant 0 a year"  # how it was set (env.cash_rate), shown in the reports

    def __post_init__(self) -> None:
        if self.cost_bps not in self.series:
            raise DataError(f"{self.label}: no series at the base cost {self.cost_bps} bps")
        t = len(self.dates) - 1
        self.risk_free = np.zeros(t) if self.risk_free is None else np.asarray(self.risk_free, np.float64)
        if self.risk_free.shape != (t,) or not np.isfinite(self.risk_free).all():
            raise DataError(
                f"{self.label}: risk_free must be {t} finite per-bar rates, got {self.risk_free.shape}"
            )
        for cost, by_name in self.series.items():
            for name, s in by_name.items():
                if s.equity.shape != (t + 1,):
                    raise DataError(
                        f"{self.label}: {name} at {cost} bps has {s.equity.shape[0]} equity points, "
                        f"the period {t + 1}"
                    )
        self.actions = np.asarray(self.actions, dtype=np.float64)
        self.symbol_returns = np.asarray(self.symbol_returns, dtype=np.float64)
        if self.symbol_returns.shape != (t, len(self.symbols)):
            raise DataError(
                f"{self.label}: symbol_returns shape {self.symbol_returns.shape}, expected {(t, len(self.symbols))}"
            )

    @property
    def base(self) -> dict[str, PolicySeries]:
        return self.series[self.cost_bps]

    def metrics(self, cost_bps: float | None = None) -> dict[str, dict[str, float]]:
        """name -> performance metrics at ``cost_bps`` (default: the base cost)."""
        level = self.cost_bps if cost_bps is None else cost_bps
        return {name: s.metrics(self.bars_per_year, self.risk_free) for name, s in self.series[level].items()}

    # ------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"actions": self.actions, "symbol_returns": self.symbol_returns, "risk_free": self.risk_free}
        for cost, by_name in self.series.items():
            for name, s in by_name.items():
                for f in FIELDS:
                    arrays[f"{_cost_key(cost)}__{name}__{f}"] = getattr(s, f)
        with atomic_path(folder / "series.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        write_json(
            folder / "period.json",
            {
                "label": self.label,
                "bars": list(self.bars),
                "dates": self.dates,
                "bars_per_year": self.bars_per_year,
                "symbols": self.symbols,
                "cost_bps": self.cost_bps,
                "cost_levels": sorted(self.series),
                "names": {_cost_key(c): sorted(v) for c, v in self.series.items()},
                "risk_free": self.risk_free_label,
                "info": self.info,
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> PeriodEvaluation:
        folder = Path(folder)
        for name in ("period.json", "series.npz"):
            if not (folder / name).exists():
                raise DataError(f"{folder}: not an evaluated period ({name} missing)")
        meta = read_json(folder / "period.json")
        with np.load(folder / "series.npz") as z:
            arrays = {k: z[k] for k in z.files}
        series: dict[float, dict[str, PolicySeries]] = {}
        for cost in meta["cost_levels"]:
            key = _cost_key(cost)
            series[float(cost)] = {
                name: PolicySeries(*(arrays[f"{key}__{name}__{f}"] for f in FIELDS))
                for name in meta["names"][key]
            }
        return cls(
            meta["label"],
            tuple(meta["bars"]),
            list(meta["dates"]),
            float(meta["bars_per_year"]),
            list(meta["symbols"]),
            float(meta["cost_bps"]),
            series,
            arrays["actions"],
            arrays["symbol_returns"],
            meta.get("info", {}),
            arrays.get("risk_free"),
            meta.get("risk_free", "constant 0 a year (not recorded)"),
        )


def _cost_key(cost: float) -> str:
    return f"{float(cost):g}bps"
