"""Typed ``gate:`` section of params.yaml (wired into :class:`hmarl.config.HmarlConfig`).

The go/no-go criteria are data: each names the metric it reads (the key in the values dict the gate is
given), a tier, a comparison and a threshold. A tier is blocking or not (``tiers``); only failures in
blocking tiers turn the verdict into no-go. This module imports only pydantic (``hmarl.config`` imports it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hmarl.params_base import Section

Comparison = Literal[">", ">=", "<", "<="]


class Criterion(Section):
    tier: str = Field(min_length=1)
    op: Comparison
    threshold: float


# the seed's criteria: name -> (tier, op, threshold, what the value is)
SEED_CRITERIA: dict[str, tuple[str, str, float, str]] = {
    # learning: the symbol agents beat the bar out of sample (walk-forward, all folds)
    "symbol_walk_forward_sharpe": ("learning", ">", 0.6, "symbol agents' walk-forward Sharpe"),
    # ours: Sharpe alone cannot tell skill from market drift on a few hundred bars (random_walk agents
    # reached 1.2 on one 250-bar window); the drift-free selection edge must be significant as well
    "symbol_timing_edge_t": (
        "learning",
        ">",
        3.0,
        "t-stat of the symbol agents' selection edge (held minus all symbols' bar return), all folds",
    ),
    # master: it must earn its place by cutting drawdown vs the symbol agents alone
    "master_drawdown_reduction": ("master", ">", 0.15, "1 - maxDD(master) / maxDD(no-master baseline)"),
    # Stage 5 anti-collapse checklist (per seed; the gate gets the worst seed's value)
    "diversity_bonus_mean": ("stage5", ">=", 0.08, "mean ep_diversity_bonus_mean over the smoke run"),
    "policy_entropy_at_check": ("stage5", ">=", 0.20, "policy_action_entropy_mean at the check step"),
    "policy_entropy_min_after_check": (
        "stage5",
        ">=",
        0.18,
        "lowest policy entropy after the check step, guard updates excluded",
    ),
    "voluntary_trade_rate_mean": ("stage5", ">=", 0.10, "mean voluntary (executed) trade rate"),
    "sanitizer_trade_delta_mean": ("stage5", "<", 0.15, "policy trade rate - executed trade rate"),
    "max_executed_action_share": ("stage5", "<=", 0.60, "largest share of one executed action"),
    "warmup_masking_events": ("stage5", ">", 0.0, "blocked BUY + restored SELL events during warmup"),
    # stability of training
    "reward_max_component_share": (
        "stability",
        "<=",
        0.90,
        "largest reward component's share of the total |contribution|",
    ),
    "training_nonfinite_updates": (
        "stability",
        "<=",
        0.0,
        "updates with a non-finite loss or telemetry value",
    ),
    # value: the policy beats equal-weight buy-and-hold on the same test bars, net of costs, in a way cash
    # cannot fake (evaluation/value.py); every Sharpe in excess of the risk-free (cash) rate
    "value_excess_sharpe_vs_buy_hold": (
        "value",
        ">",
        0.1,
        "policy excess-return Sharpe - buy-and-hold's (a clone scores ~0)",
    ),
    "value_matched_vol_return_vs_buy_hold": (
        "value",
        ">",
        0.0,
        "policy annual return at buy-and-hold's volatility - buy-and-hold's annual return (all cash: undefined)",
    ),
    "value_excess_annual_return": (
        "value",
        ">",
        0.03,
        "policy annual return over the risk-free path (all cash: 0)",
    ),
    # strategic targets: reported; blocking only when tiers.strategic is true
    "strategic_annual_return": ("strategic", ">", 0.15, "policy annual return"),
    "strategic_sharpe": ("strategic", ">", 0.8, "policy Sharpe (excess of the risk-free rate)"),
    "strategic_max_drawdown": ("strategic", "<", 0.25, "policy max drawdown"),
}
DESCRIPTIONS = {name: row[3] for name, row in SEED_CRITERIA.items()}


def _seed_criteria() -> dict[str, Criterion]:
    return {n: Criterion(tier=t, op=op, threshold=x) for n, (t, op, x, _) in SEED_CRITERIA.items()}


class Stage5Config(Section):
    check_step: int = Field(6000, ge=0)  # entropy must have reached its floor by this env step
    warmup_steps: int = Field(4000, ge=0)  # masking events must be seen before this env step


class PromotionConfig(Section):
    metric: str = "sharpe"  # champion/challenger comparison on this metric, same test folds
    higher_is_better: bool = True
    margin: float = Field(0.05, ge=0)  # the challenger may trail the champion by at most this much


class GateConfig(Section):
    tiers: dict[str, bool] = Field(  # tier -> blocking
        default_factory=lambda: {
            "learning": True,
            "master": True,
            "stage5": True,
            "stability": True,
            "value": True,
            "strategic": False,
        }
    )
    criteria: dict[str, Criterion] = Field(default_factory=_seed_criteria)
    stage5: Stage5Config = Stage5Config()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _known_tiers(self) -> GateConfig:
        unknown = sorted({f"{n} ({c.tier})" for n, c in self.criteria.items() if c.tier not in self.tiers})
        if unknown:
            raise ValueError(f"criteria with an unknown tier: {unknown} (tiers: {sorted(self.tiers)})")
        return self


# --------------------------------------------------------------------------- evaluation steps
class Stage5RunConfig(Section):
    """``stage5:``: the short cross-seed retrain (the checklist itself is ``gate.stage5``)."""

    seeds: list[int] = Field(default_factory=lambda: [42, 1337, 9001], min_length=1)
    total_steps: int = Field(8192, ge=1)  # env steps per seed (the seed's 5-10k smoke run)


class PassiveBaselinesConfig(Section):
    """``walk_forward.baselines``: the passive rules reported next to buy-and-hold (evaluation/passive.py)."""

    vol_target: float = Field(0.15, gt=0)  # annual volatility target of the equal-weight portfolio
    vol_window: int = Field(20, ge=2)  # trailing bars of realized volatility
    trend_window: int = Field(200, ge=2)  # bars of the equal-weight index's simple moving average
    rebalance_band: float = Field(0.25, ge=0)  # trade a symbol when its weight is this share of a slot off


class WalkForwardConfig(Section):
    """``walk_forward:``: which folds are evaluated (one DVC stage / KFP task each) and how."""

    folds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)  # must cover splits.n_folds
    cost_bps: list[float] = Field(default_factory=lambda: [0.0, 15.0, 30.0, 50.0], min_length=1)
    stress_windows: dict[str, tuple[str, str]] = Field(  # name -> [first day, last day], when covered
        default_factory=lambda: {
            "gfc_2008": ("2008-09-01", "2009-03-31"),
            "covid_2020": ("2020-02-19", "2020-04-30"),
        }
    )
    eval_envs: int = Field(8, ge=1)  # accounts of sampling policies (masked random)
    baselines: PassiveBaselinesConfig = PassiveBaselinesConfig()
    pbo_splits: int = Field(8, ge=2)  # CSCV blocks (even)

    @model_validator(mode="after")
    def _checks(self) -> WalkForwardConfig:
        if len(set(self.folds)) != len(self.folds) or min(self.folds) < 0:
            raise ValueError(f"folds: distinct fold indices >= 0 expected, got {self.folds}")
        if any(c < 0 for c in self.cost_bps):
            raise ValueError(f"cost_bps: round-trip costs must be >= 0, got {self.cost_bps}")
        if self.pbo_splits % 2:
            raise ValueError(f"pbo_splits: must be even, got {self.pbo_splits}")
        return self


class PromoteConfig(Section):
    """``promote:``: the MLflow registered model the pipeline promotes into."""

    model_name: str = Field("hmarl", min_length=1)
