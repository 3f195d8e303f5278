"""Typed ``env:`` and ``reward:`` sections of params.yaml (wired into :class:`hmarl.config.HmarlConfig`).

Every number of the trading model lives here; the simulator reads nothing else. This module imports
only pydantic so that ``hmarl.config`` can import it without pulling in torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hmarl.params_base import Section

# Reward components, in the order of the simulator's ``components`` tensor (see rewards.py).
REWARD_COMPONENTS = (
    "pnl",
    "cost",
    "timing",
    "sharpe",
    "drawdown",
    "utilization",
    "diversification",
    "diversity_bonus",
    "action_repeat_penalty",
    "intrinsic_action_reward",
)
MASTER_COMPONENTS = ("risk_adjusted", "diversification", "excess_return", "utility")


class MasterGridConfig(Section):
    """The 4 x 4 x 3 directive grid: index = (risk * n_caps + cap) * n_modes + mode."""

    risk_multipliers: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25], min_length=1)
    position_caps: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.03, 0.05], min_length=1)
    modes: list[str] = Field(default_factory=lambda: ["defensive", "neutral", "aggressive"], min_length=1)
    # per mode: open-position limit as a fraction of the universe (at least one position)
    max_open_fraction: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=1)
    default: list[int] = Field(default_factory=lambda: [2, 1, 1], min_length=3, max_length=3)
    interval: int = Field(5, ge=1)  # master acts every `interval` bars of an episode
    # equity: a position cap is a fraction of equity; equal_weight: a multiple of the equal-weight slot
    # 1 / S (S = symbols in the env), so caps of 1.0 at risk 1.0 let the agents hold the whole universe
    # vol_target: a multiple of the equal-weight slot scaled per bar to the volatility target below (the
    # volatility-targeted equal weight is the grid's cap 1 at risk 1; env/vol_prior.py)
    cap_unit: Literal["equity", "equal_weight", "vol_target"] = "equity"
    vol_target: float = Field(0.15, gt=0)  # annual volatility of the equal-weight portfolio (vol_target)
    vol_window: int = Field(20, ge=2)  # trailing bars of its realized volatility (vol_target)
    # none: the directive sizes new orders only; trim / target: at a bar where the master is due, a held
    # position whose agent HOLDs is sold down to (trim, target) or bought up to (target) its target
    # initial_fraction x allocation when it lies outside target x (1 +- rebalance_band) (env/rebalance.py)
    rebalance: Literal["none", "trim", "target"] = "none"
    rebalance_band: float = Field(0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> MasterGridConfig:
        if len(self.max_open_fraction) != len(self.modes):
            raise ValueError("max_open_fraction needs one value per mode")
        if any(v <= 0 for v in self.risk_multipliers + self.position_caps + self.max_open_fraction):
            raise ValueError("risk_multipliers, position_caps and max_open_fraction must be > 0")
        sizes = (len(self.risk_multipliers), len(self.position_caps), len(self.modes))
        if any(not 0 <= d < n for d, n in zip(self.default, sizes, strict=True)):
            raise ValueError(f"default {self.default} is outside the grid {sizes}")
        return self


class CashRateConfig(Section):
    """What idle cash earns, and the risk-free rate of every Sharpe / Sortino / deflated Sharpe.

    ``annual``: a constant annual rate (simple, accrued per bar as ``annual / bars_per_year``).
    ``series``: the name of an exogenous column (``<source name>__<column>`` of ``data.exogenous``, e.g. a
    3-month T-bill yield file with timestamp + rate) holding the annual rate per bar (as-of backward, like
    every exogenous series); it replaces ``annual`` where it has a value (before its first value: ``annual``).
    ``percent``: the series is in percent (5.02 = 5.02 %).
    The default is a constant 0: the synthetic markets price no interest (their drift is the planted signal,
    nothing else), so a positive rate there would be a free gift to cash; real-data profiles set the rate
    of their period and currency (a wrong constant biases every excess Sharpe, so none is guessed here)."""

    annual: float = Field(0.0, ge=-0.05, le=1.0)
    series: str | None = None
    percent: bool = False

    def describe(self) -> str:
        if self.series:
            return f"series {self.series} (annual{', percent' if self.percent else ''}; {self.annual:g} before it)"
        return f"constant {self.annual:g} a year"


class EnvConfig(Section):
    num_envs: int = Field(64, ge=1)
    episode_length: int = Field(256, ge=1)  # steps; an episode also ends at the end of its bar range
    initial_cash: float = Field(1_000_000.0, gt=0)
    dtype: Literal["float32", "float64"] = "float64"  # account and reward arithmetic
    check_actions: bool = True  # validate action ids/shape each step (switch off in a trusted hot loop)
    # torch: batched tensor ops (CPU and CUDA); native: the same step fused in C (CPU, float64 only);
    # auto: native where it applies and a C compiler is present, else torch
    backend: Literal["auto", "torch", "native"] = "auto"
    # cash: episodes start in cash; allocation: each symbol tradable at the start bar is bought at its
    # close for initial_fraction of its allocation under the directive in force (env/initial.py)
    initial_position: Literal["cash", "allocation"] = "cash"
    initial_fraction: float = Field(1.0, gt=0, le=1)
    # costs
    commission_bps_round_trip: float = Field(15.0, ge=0)  # split evenly over the two legs
    slippage_bps: float = Field(1.0, ge=0)  # fixed part, per leg
    slippage_vol_coef: float = Field(0.1, ge=0)  # x per-bar volatility of the symbol (known at decision)
    slippage_impact_coef: float = Field(0.1, ge=0)  # x order notional / average dollar volume
    slippage_max: float = Field(0.05, ge=0, lt=1)  # cap on the slippage fraction of one fill
    vol_window: int = Field(20, ge=2)  # bars of the rolling volatility used by slippage
    adv_window: int = Field(20, ge=1)  # bars of the rolling average dollar volume
    allow_leverage: bool = False  # long-only cash account unless true
    max_leverage: float = Field(1.0, ge=1.0)  # gross exposure / equity when leverage is allowed
    financing_rate: float = Field(0.05, ge=0)  # annual rate charged on negative cash
    cash_rate: CashRateConfig = CashRateConfig()  # what positive cash earns (the risk-free rate)
    # actions (fractions of the symbol's allowed allocation = equity x cap x risk multiplier)
    buy_fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=3, max_length=3)
    add_fraction: float = Field(0.25, gt=0, le=1)  # ADD_TO_WINNER, up to the full allocation
    sell_partial_fraction: float = Field(0.5, gt=0, lt=1)
    min_order_fraction: float = Field(0.05, ge=0, lt=1)  # of the allocation: dust below is sold fully
    winner_threshold: float = Field(0.0, ge=0)  # ADD_TO_WINNER needs close > entry x (1 + this)
    master: MasterGridConfig = MasterGridConfig()
    # termination
    bankruptcy_fraction: float = Field(0.1, ge=0, lt=1)  # equity <= this x initial cash
    max_drawdown: float = Field(0.5, gt=0, le=1)  # from the episode's equity peak; 1.0 disables
    # anti-collapse mechanics
    max_consecutive_actions: int = Field(3, ge=1)  # the next identical non-HOLD action is forced to HOLD
    diversity_window: int = Field(50, ge=1)  # steps of the unique-action window
    # [min unique executed actions in the window, bonus], checked from the first row down
    diversity_tiers: list[tuple[int, float]] = Field(default_factory=lambda: [(5, 0.3), (4, 0.2), (3, 0.1)])

    @model_validator(mode="after")
    def _consistent(self) -> EnvConfig:
        if sorted(self.buy_fractions) != self.buy_fractions or any(
            not 0 < f <= 1 for f in self.buy_fractions
        ):
            raise ValueError("buy_fractions must be increasing values in (0, 1]")
        if self.allow_leverage is False and self.max_leverage != 1.0:
            raise ValueError("max_leverage > 1 needs allow_leverage: true")
        if any(not 1 <= n <= 7 for n, _ in self.diversity_tiers):
            raise ValueError("diversity_tiers: unique-action counts must be in 1..7")
        return self

    @property
    def fee_rate(self) -> float:
        """Commission per leg as a fraction of notional."""
        return self.commission_bps_round_trip / 2.0 / 1e4


_SEED_FORMULA = {
    "pnl": 10.0,
    "cost": 5.0,
    "timing": 2.0,
    "sharpe": 3.0,
    "drawdown": 5.0,
    "utilization": 0.5,
    "diversification": 1.0,
    "diversity_bonus": 1.0,
    "action_repeat_penalty": 0.05,
    "intrinsic_action_reward": 0.0,
}
_CONFIG_TEMPLATE = {
    "pnl": 0.75,
    "cost": 0.10,
    "sharpe": 0.03,
    "drawdown": 0.02,
    "diversity_bonus": 0.07,
    "action_repeat_penalty": 0.05,
    "intrinsic_action_reward": 0.01,
}
# Per-step pnl is a return on the allocation, ~1e-3 for a good trade, while the diversity bonus tiers are
# 0.1-0.3 per step: under the template's weights the bonus is ~10x the edge and the agents learn to vary
# their actions, not to trade. Here pnl is scaled to O(0.01-0.1) per step, cost weighs as much as pnl (both
# are money: a smaller cost weight rewards churning) and the anti-collapse terms stay a tie-breaker.
_PNL_SCALED = {"pnl": 10.0, "cost": 10.0, "diversity_bonus": 0.1, "action_repeat_penalty": 0.05}


class RewardConfig(Section):
    weights: str = "config_template"  # name of the weight set used
    weight_sets: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "seed_formula": dict(_SEED_FORMULA),
            "config_template": dict(_CONFIG_TEMPLATE),
            "pnl_scaled": dict(_PNL_SCALED),
        }
    )
    roi_scale: float = Field(2.0, ge=0)  # pnl multiplier = clip(1 + roi_scale x position ROI, roi_clip)
    roi_clip: tuple[float, float] = (0.5, 3.0)
    sharpe_window: int = Field(20, ge=1)  # EMA span of the rolling Sharpe
    sharpe_clip: float = Field(1.0, gt=0)
    trade_drawdown_threshold: float = Field(0.10, gt=0, lt=1)  # intra-trade drawdown beyond this ...
    trade_drawdown_penalty: float = Field(0.01, ge=0)  # ... costs this much per step
    utilization_scale: float = Field(0.001, ge=0)  # per step, for a fully used allocation
    diversification_scale: float = Field(0.001, ge=0)  # per step, for 1 - HHI = 1
    # the master's utility component, r - risk_aversion / 2 x r^2 of the portfolio's bar return r: its
    # best constant exposure is mean / (risk_aversion x variance), so it pays to cut risk when volatility rises
    risk_aversion: float = Field(3.0, ge=0)
    # none: pnl is the position's return on its allocation; hold: minus the symbol's close-to-close return
    # (what holding the full allocation made), a control variate that makes holding the neutral choice
    pnl_baseline: Literal["none", "hold"] = "none"
    master_weights: dict[str, float] = Field(
        default_factory=lambda: {"risk_adjusted": 0.01, "diversification": 1.0, "excess_return": 1.0}
    )

    @model_validator(mode="after")
    def _consistent(self) -> RewardConfig:
        if self.weights not in self.weight_sets:
            raise ValueError(
                f"weights: unknown weight set {self.weights!r} (known: {sorted(self.weight_sets)})"
            )
        for name, ws in self.weight_sets.items():
            unknown = sorted(set(ws) - set(REWARD_COMPONENTS))
            if unknown:
                raise ValueError(
                    f"weight_sets.{name}: unknown components {unknown} (known: {REWARD_COMPONENTS})"
                )
        unknown = sorted(set(self.master_weights) - set(MASTER_COMPONENTS))
        if unknown:
            raise ValueError(f"master_weights: unknown components {unknown} (known: {MASTER_COMPONENTS})")
        lo, hi = self.roi_clip
        if not 0 <= lo <= hi:
            raise ValueError("roi_clip must be [low, high] with 0 <= low <= high")
        return self

    def weight_vector(self) -> list[float]:
        """Weights of the selected set in REWARD_COMPONENTS order (absent components weigh 0)."""
        ws = self.weight_sets[self.weights]
        return [float(ws.get(c, 0.0)) for c in REWARD_COMPONENTS]

    def master_weight_vector(self) -> list[float]:
        return [float(self.master_weights.get(c, 0.0)) for c in MASTER_COMPONENTS]
