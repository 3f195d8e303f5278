"""The observation/action contract between the simulator and the agents (what a policy sees and returns).

The simulator (vec_env.py, its native step, gym_api.py) produces these shapes and the agents, rollout
buffers and the desk consume them; both sides import them from here, so the agents never depend on the
simulator's code. Action ids and the directive grid live in actions.py (re-exported here).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hmarl.env.actions import ACTION_NAMES, NUM_ACTIONS, Action

__all__ = [
    "ACTION_NAMES",
    "AGENT_FEATURES",
    "DIRECTIVE_FEATURES",
    "NUM_ACTIONS",
    "PORTFOLIO_FEATURES",
    "Action",
    "Observation",
    "StepResult",
    "check_ids",
]

AGENT_FEATURES = (
    "position_weight",  # value / equity
    "allocation_used",  # value / allowed allocation
    "entry_price_rel",  # entry / close - 1
    "unrealized_pnl",  # (close - entry) x shares / equity
    "holding_bars",  # bars held / episode_length
    "trade_drawdown",  # 1 - close / highest close since entry
    "tradable",
)
PORTFOLIO_FEATURES = (
    "cash_fraction",
    "exposure",
    "drawdown",
    "rolling_sharpe",
    "open_positions",  # open positions / limit
    "episode_progress",
    "master_due",
)
DIRECTIVE_FEATURES = ("risk_multiplier", "position_cap", "open_limit_fraction")


class Observation(NamedTuple):
    bar: torch.Tensor  # (N,) int64 bar index t: gather market windows by it
    agent: torch.Tensor  # (N, S, len(AGENT_FEATURES)) float32 (a feature-major view on the torch backend)
    portfolio: torch.Tensor  # (N, len(PORTFOLIO_FEATURES)) float32
    regime: torch.Tensor  # (N, R) float32
    directive: torch.Tensor  # (N,) int64 index in the master grid
    directive_features: torch.Tensor  # (N, 3) float32
    action_counts: torch.Tensor  # (N, S, 7) uint8, executed actions in the diversity window
    mask: torch.Tensor  # (N, S, 7) bool, allowed actions for the decision at t
    master_due: torch.Tensor  # (N,) bool, the master decides at this bar


class StepResult(NamedTuple):
    obs: Observation
    reward: torch.Tensor  # (N, S) weighted sum of the components
    components: torch.Tensor  # (C, N, S) REWARD_COMPONENTS order, unweighted
    master_reward: torch.Tensor  # (N,)
    master_components: torch.Tensor  # (4, N) MASTER_COMPONENTS order, unweighted
    terminated: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool
    policy_action: torch.Tensor  # (N, S) int64 as given
    executed_action: torch.Tensor  # (N, S) int64
    info: dict[str, torch.Tensor]


def check_ids(ids: torch.Tensor, shape: tuple[int, ...], n: int, what: str) -> None:
    """``ids`` must be an integer tensor of ``shape`` with values in ``0..n-1`` (actions, directives)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor of shape {shape}, got {type(ids).__name__}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"{what}: expected shape {shape}, got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{what}: expected an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(
            f"{what}: ids must be in 0..{n - 1}, got values in {int(ids.min())}..{int(ids.max())}"
        )
