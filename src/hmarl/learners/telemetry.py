"""Per-update telemetry of a symbol-agent rollout, computed from facts (policy and executed actions), and
of the master's directives.

Names follow the seed: the MLflow mandatory metrics (``policy_action_entropy_mean``, ...) come from
:func:`hmarl.env.telemetry.action_telemetry` over the rollout's agents and from the simulator's episode
log; the TensorBoard tags (``charts/...``, ``losses/...``, ``rewards/...``) are built by :func:`chart_tags`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
import torch

from hmarl.env.actions import ACTION_NAMES, NUM_ACTIONS
from hmarl.env.params import REWARD_COMPONENTS
from hmarl.env.telemetry import action_telemetry, histogram_entropy
from hmarl.evaluation.stage5_checklist import MANDATORY

if TYPE_CHECKING:
    from hmarl.learners.collect import RolloutSums
    from hmarl.learners.rollout import RolloutBuffer


def agent_histograms(actions: torch.Tensor) -> torch.Tensor:
    """``(T, N, S)`` action ids -> ``(N, S, 7)`` float counts per agent (one scatter, no one-hot)."""
    t, n, s = actions.shape
    index = torch.arange(n * s, device=actions.device).view(1, n, s) * NUM_ACTIONS + actions.long()
    counts = torch.zeros(n * s * NUM_ACTIONS, device=actions.device)
    counts.index_add_(0, index.reshape(-1), torch.ones(index.numel(), device=actions.device))
    return counts.view(n, s, NUM_ACTIONS)


def unique_per_window(actions: torch.Tensor, window: int) -> torch.Tensor | None:
    """``(windows, N, S)`` distinct actions in each full ``window``-step slice (None if none fits)."""
    t = actions.shape[0]
    if t < window:
        return None
    slices = actions[: t - t % window].unflatten(0, (t // window, window))
    seen = torch.zeros(
        *slices.shape[:1], *slices.shape[2:], NUM_ACTIONS, dtype=torch.bool, device=actions.device
    )
    seen.scatter_(-1, slices.long().permute(0, 2, 3, 1), True)
    return seen.sum(-1)


def rollout_telemetry(
    policy: torch.Tensor,  # (T, N, S) uint8, the active symbols only
    executed: torch.Tensor,
    window: int,
) -> tuple[dict[str, float], torch.Tensor]:
    """Figures of one rollout and the per-symbol policy action entropy ``(S,)`` (mean over envs)."""
    figures = action_telemetry(policy, executed, window)
    per_symbol = histogram_entropy(agent_histograms(policy)).mean(0)
    unique = unique_per_window(executed, window)
    if unique is not None:
        figures["unique_actions_per_window_mean"] = unique.float().mean().item()
        figures["unique_actions_per_window_ge4"] = (
            (unique >= 4).float().mean().item()
        )  # share of agent-windows
    return figures, per_symbol


def chart_tags(m: dict[str, float], reward_weights: list[float]) -> dict[str, float]:
    """TensorBoard scalars with the seed's names from the trainer's per-update metrics ``m``."""
    tags = {
        "charts/policy_action_entropy_mean": m["policy_action_entropy_mean"],
        "charts/executed_action_entropy_mean": m["executed_action_entropy_mean"],
        "charts/executed_vs_policy_trades": m["executed_vs_policy_trades"],
        "charts/consecutive_action_violations": m["consecutive_action_violations"],
        "charts/diversity_bonus": m["diversity_bonus"],
        "charts/SPS": m["SPS"],
        "charts/learning_rate": m["learning_rate"],
        "charts/entropy_coef": m["entropy_coef"],
        "charts/sl_prior_coef": m["sl_prior_coef"],
        "charts/entropy_guard_interventions": m["entropy_guard_interventions"],
        "charts/active_symbols": m["active_symbols"],
    }
    for key in (
        "ep_return_mean",
        "ep_excess_return_mean",
        "ep_unique_actions_mean",
        "ep_diversity_bonus_mean",
    ):
        if key in m:
            tags[f"charts/{key}"] = m[key]
    for name in ACTION_NAMES:
        tags[f"charts/action_distribution/{name}"] = m[f"executed_fraction_{name}"]
    for key, value in m.items():
        if key.startswith("loss_"):
            tags[f"losses/{key[5:]}"] = value
    for c, w in zip(REWARD_COMPONENTS, reward_weights, strict=True):
        tags[f"rewards/{c}"] = w * m[f"component_{c}"]  # the component's contribution to the reward
    return tags


def update_metrics(
    figures: dict[str, float],
    sums: RolloutSums,
    losses: dict[str, float],
    episode: dict,
    buf: RolloutBuffer,
    timers: dict[str, float],
    elapsed: float,
    weights: list[float],
) -> dict:
    steps = max(sums.agent_steps, 1.0)
    valid = buf.valid.unsqueeze(-1)
    policy_trades = float(((buf.action != 0) & valid).sum())
    executed_trades = float(((buf.executed != 0) & valid).sum())
    m = dict(figures)
    m.update(losses)
    for key in MANDATORY:
        if key not in m and key in episode:
            m[key] = float(episode[key])
    for key in ("ep_return_mean", "ep_excess_return_mean", "ep_max_drawdown_mean", "ep_length_mean"):
        if key in episode:
            m[key] = float(episode[key])
    components = (sums.components / steps).tolist()
    for c, value in zip(REWARD_COMPONENTS, components, strict=True):
        m[f"component_{c}"] = value
    m["reward_mean"] = float(sum(w * v for w, v in zip(weights, components, strict=True)))
    m["diversity_bonus"] = m["component_diversity_bonus"]
    m["consecutive_action_violations"] = float(sums.forced) / steps
    m["executed_vs_policy_trades"] = executed_trades / policy_trades if policy_trades else float("nan")
    m["mask_blocked_buy"], m["mask_restored_sell"] = (float(x) for x in sums.mask_events)
    m["time_env"], m["time_policy"], m["time_update"] = timers["env"], timers["policy"], timers["update"]
    m["seconds"] = elapsed
    return m


def log_update(
    tracker, metrics: dict[str, float], weights: list[float], executed: torch.Tensor, step: int
) -> None:
    tracker.log_metrics(
        {
            **{k: v for k, v in metrics.items() if not k.startswith(("loss_", "component_"))},
            **chart_tags(metrics, weights),
        },
        step=step,
    )
    hist = getattr(tracker, "log_histogram", None)
    if hist is not None:
        bins = np.arange(len(ACTION_NAMES) + 1) - 0.5  # one bin per action id
        hist("charts/action_distribution", executed.reshape(-1).cpu().numpy(), step=step, bins=bins)


class _NoBar:
    def set_postfix(self, *args, **kwargs) -> None: ...
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, initial: int, enabled: bool):
    """tqdm bar with SPS and key metrics on a terminal; nothing otherwise (logs, CI, subprocesses)."""
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train_symbols", unit="update", dynamic_ncols=True)


# --------------------------------------------------------------------------- the master
def directive_figures(counts: torch.Tensor, table: torch.Tensor) -> dict[str, float]:
    """Entropy of the chosen directives and the mean risk multiplier / cap / open limit they set."""
    total = float(counts.sum())
    if total == 0:
        return {}
    p = counts.double() / total
    nz = p[p > 0]
    mean = (p.unsqueeze(1) * table.double().cpu()).sum(0)
    return {
        "master_directive_entropy": float(-(nz * nz.log()).sum()),
        "master_risk_mean": float(mean[0]),
        "master_cap_mean": float(mean[1]),
        "master_open_limit_mean": float(mean[2]),
    }


def log_master_update(tracker, metrics: dict[str, float], counts: torch.Tensor, step: int) -> None:
    """TensorBoard ``charts/master_*`` / ``losses/master_*`` and MLflow metrics; the directive histogram."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("loss_"):
            out[f"losses/master_{k[5:]}"] = v
        elif k.startswith("master_"):
            out[f"charts/{k}"] = v
        else:
            out[f"charts/master_{k}"] = v
    tracker.log_metrics(out, step=step)
    hist = getattr(tracker, "log_histogram", None)
    if hist is not None:
        ids = np.repeat(np.arange(counts.numel()), counts.cpu().numpy())
        if ids.size:
            hist("charts/master_directive", ids, step=step, bins=np.arange(counts.numel() + 1) - 0.5)
