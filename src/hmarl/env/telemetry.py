"""Telemetry from facts: the policy's action and the executed action of every step.

Two levels:

- :class:`EpisodeLog` accumulates, inside ``step`` and without leaving the device, per-episode sums
  (action histograms of policy and executed actions, violations, masked-out picks, reward components,
  costs, ...). When an episode ends its row is appended to a fixed buffer; :meth:`EpisodeLog.collect`
  (called outside the hot loop) turns the finished rows into means: ``policy_action_entropy_mean``,
  ``executed_action_entropy_mean``, ``voluntary_trade_rate_mean``, ``sanitizer_trade_delta_mean``,
  ``ep_unique_actions_mean``, ``ep_diversity_bonus_mean``, ... Entropies here are of the episode's
  action histogram (pooled over its symbols), in nats.
- :func:`action_telemetry` computes the same kind of figures per agent from a rollout's
  ``(steps, envs, symbols)`` policy/executed action tensors (what a trainer logs per update).
"""

from __future__ import annotations

import math

import torch

from hmarl.env.actions import ACTION_NAMES, NUM_ACTIONS
from hmarl.env.params import REWARD_COMPONENTS

# per-agent quantities summed over symbols each step, after the reward components
STEP_SUMS = ("reward", "cost", "turnover", "invalid", "new_actions")

ACC_COLUMNS = (
    ("length",)
    + tuple(f"policy_{n}" for n in ACTION_NAMES)
    + tuple(f"executed_{n}" for n in ACTION_NAMES)
    + tuple(f"component_{c}" for c in REWARD_COMPONENTS)
    + STEP_SUMS
    + ("master_reward", "financing")
)
FINAL_COLUMNS = ("return", "max_drawdown", "benchmark_return", "terminated")
COLUMNS = ACC_COLUMNS + FINAL_COLUMNS
_COL = {name: i for i, name in enumerate(COLUMNS)}
_POLICY = slice(1, 1 + NUM_ACTIONS)
_EXECUTED = slice(1 + NUM_ACTIONS, 1 + 2 * NUM_ACTIONS)
_PER_AGENT = slice(_EXECUTED.stop, _EXECUTED.stop + len(REWARD_COMPONENTS) + len(STEP_SUMS))


class EpisodeLog:
    """Per-env episode accumulators, laid out ``(column, env)``; finished rows go to a fixed buffer."""

    def __init__(
        self, num_envs: int, num_symbols: int, dtype: torch.dtype, device: torch.device, capacity: int = 0
    ):
        self.num_symbols = num_symbols
        self.capacity = capacity or max(4 * num_envs, 256)
        self.acc = torch.zeros(len(ACC_COLUMNS), num_envs, dtype=dtype, device=device)
        self.rows = torch.zeros(self.capacity + 1, len(COLUMNS), dtype=dtype, device=device)  # last row: dump
        self.count = torch.zeros((), dtype=torch.int64, device=device)  # episodes finished since collect
        self._ones = torch.ones(num_symbols, num_envs, dtype=dtype, device=device)

    def accumulate(
        self,
        policy: torch.Tensor,
        executed: torch.Tensor,
        per_agent: torch.Tensor,
        master_reward: torch.Tensor,
        financing: torch.Tensor,
    ) -> None:
        """Add one step: actions (N, S) int64; ``per_agent`` (C + len(STEP_SUMS), N) sums over symbols."""
        acc = self.acc
        acc[0] += 1.0
        acc[_POLICY].scatter_add_(0, policy.T, self._ones)
        acc[_EXECUTED].scatter_add_(0, executed.T, self._ones)
        acc[_PER_AGENT] += per_agent
        acc[-2] += master_reward
        acc[-1] += financing

    def finish(self, done: torch.Tensor, finals: torch.Tensor) -> None:
        """Append the rows of envs whose episode ended (``done`` (N,) bool); ``finals`` (4, N)."""
        rank = done.cumsum(0) + self.count - 1
        pos = torch.where(done, rank.clamp_max(self.capacity), self.capacity)
        self.rows.index_copy_(0, pos, torch.cat([self.acc, finals], 0).T)
        self.count += done.sum()

    def reset_where(self, keep: torch.Tensor) -> None:
        self.acc.mul_(keep)

    def collect(self) -> dict[str, float]:
        """Means over the episodes finished since the last call (then forgets them)."""
        n = int(self.count)
        rows = self.rows[: min(n, self.capacity)].double().cpu()
        self.count.zero_()
        stats = {"episodes": float(n), "episodes_dropped": float(max(0, n - self.capacity))}
        if rows.shape[0] == 0:
            return stats
        col = {name: rows[:, i] for name, i in _COL.items()}
        agent_steps = (col["length"] * self.num_symbols).clamp_min(1.0)
        policy, executed = rows[:, _POLICY], rows[:, _EXECUTED]
        policy_rate = (policy[:, 1:].sum(1)) / agent_steps
        voluntary_rate = (executed[:, 1:].sum(1)) / agent_steps
        stats.update(
            ep_length_mean=col["length"].mean().item(),
            ep_return_mean=col["return"].mean().item(),
            ep_excess_return_mean=(col["return"] - col["benchmark_return"]).mean().item(),
            ep_max_drawdown_mean=col["max_drawdown"].mean().item(),
            ep_terminated_fraction=col["terminated"].mean().item(),
            policy_action_entropy_mean=histogram_entropy(policy).mean().item(),
            executed_action_entropy_mean=histogram_entropy(executed).mean().item(),
            voluntary_trade_rate_mean=voluntary_rate.mean().item(),
            policy_trade_rate_mean=policy_rate.mean().item(),
            sanitizer_trade_delta_mean=(policy_rate - voluntary_rate).mean().item(),
            invalid_action_rate_mean=(col["invalid"] / agent_steps).mean().item(),
            consecutive_action_violations_mean=(-col["component_action_repeat_penalty"] / agent_steps)
            .mean()
            .item(),
            # an action counts once per agent and episode when first executed
            ep_unique_actions_mean=(col["new_actions"] / self.num_symbols).mean().item(),
            ep_diversity_bonus_mean=(col["component_diversity_bonus"] / agent_steps).mean().item(),
            ep_reward_mean=(col["reward"] / agent_steps).mean().item(),
            ep_master_reward_mean=(col["master_reward"] / col["length"].clamp_min(1.0)).mean().item(),
            ep_cost_mean=col["cost"].mean().item(),
            ep_financing_mean=col["financing"].mean().item(),  # net: borrowing paid - cash interest earned
            ep_turnover_mean=col["turnover"].mean().item(),
        )
        for c in REWARD_COMPONENTS:
            stats[f"reward_{c}_mean"] = (col[f"component_{c}"] / agent_steps).mean().item()
        total_exec = executed.sum(0) / executed.sum().clamp_min(1.0)
        total_policy = policy.sum(0) / policy.sum().clamp_min(1.0)
        for i, name in enumerate(ACTION_NAMES):
            stats[f"executed_fraction_{name}"] = total_exec[i].item()
            stats[f"policy_fraction_{name}"] = total_policy[i].item()
        return stats


def histogram_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of histograms along the last dim (0 for an empty histogram)."""
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def action_histogram(actions: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Counts of each action along ``dim``: the result has that dim replaced by 7 (last)."""
    one_hot = torch.nn.functional.one_hot(actions.long(), NUM_ACTIONS)
    return one_hot.sum(dim)


def action_telemetry(policy: torch.Tensor, executed: torch.Tensor, window: int = 120) -> dict[str, float]:
    """Per-agent figures from rollout actions shaped ``(steps, envs, symbols)``.

    Entropies are of each agent's action histogram over the rollout (nats), averaged over agents;
    ``unique_actions_per_window_min`` is the fewest distinct executed actions any agent shows in a
    ``window``-step slice (the seed's >= 4 distinct actions per 120-step check).
    """
    steps = policy.shape[0]
    p_hist = action_histogram(policy).double()
    e_hist = action_histogram(executed).double()
    policy_rate = (policy != 0).double().mean(0)
    exec_rate = (executed != 0).double().mean(0)
    out = {
        "policy_action_entropy_mean": histogram_entropy(p_hist).mean().item(),
        "executed_action_entropy_mean": histogram_entropy(e_hist).mean().item(),
        "voluntary_trade_rate_mean": exec_rate.mean().item(),
        "sanitizer_trade_delta_mean": (policy_rate - exec_rate).mean().item(),
        "max_executed_action_share": (e_hist / steps).max().item(),
        "entropy_ceiling": math.log(NUM_ACTIONS),
    }
    if steps >= window:
        slices = executed[: steps - steps % window].reshape(steps // window, window, *executed.shape[1:])
        unique = (action_histogram(slices, dim=1) > 0).sum(-1)
        out["unique_actions_per_window_min"] = float(unique.min().item())
    totals = e_hist.sum(tuple(range(e_hist.dim() - 1)))
    for i, name in enumerate(ACTION_NAMES):
        out[f"executed_fraction_{name}"] = (totals[i] / totals.sum()).item()
    return out
