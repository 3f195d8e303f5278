"""The master agent: a portfolio manager choosing one directive of the risk x cap x mode grid.

Observation (per env, built by :func:`master_observation` from the simulator observation and the frozen
symbol agents' outputs on it):

- symbol-agent intents, summarized across symbols: mean and std of the masked action probabilities (7 + 7),
  mean value, fraction of agents whose favourite action buys / sells;
- portfolio telemetry: the simulator's portfolio features (cash %, exposure, drawdown, rolling Sharpe,
  open positions, episode progress, master due) plus concentration (HHI of position weights);
- market regime features of the bar, the current directive's features;
- benchmark state (:func:`benchmark_table`): benchmark return over the last interval and 20 bars, and its
  drawdown from the 60-bar high.

The joint portfolio state the centralized critic adds: every symbol's position weight, unrealized P&L and
symbol-agent value (3 x S).

    actor   obs -> 256 -> LayerNorm -> GELU -> 128 -> GELU -> 48 logits
    critic  obs (+ joint state) -> 256 -> LayerNorm -> GELU -> 128 -> GELU -> 1
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hmarl.agents.master_params import MasterConfig
from hmarl.env.actions import Action
from hmarl.env.spec import AGENT_FEATURES, DIRECTIVE_FEATURES, PORTFOLIO_FEATURES, Observation

NUM_INTENT = 7 + 7 + 3
NUM_BENCH = 3
BENCH_LONG, BENCH_PEAK = 20, 60
_WEIGHT = AGENT_FEATURES.index("position_weight")
_PNL = AGENT_FEATURES.index("unrealized_pnl")


def obs_width(num_regime: int) -> int:
    return NUM_INTENT + len(PORTFOLIO_FEATURES) + 1 + num_regime + len(DIRECTIVE_FEATURES) + NUM_BENCH


def joint_width(num_symbols: int) -> int:
    return 3 * num_symbols


def benchmark_table(benchmark: torch.Tensor, interval: int) -> torch.Tensor:
    """``(T, 3)`` causal benchmark state per bar: return over ``interval`` and 20 bars, drawdown from the
    60-bar high (windows clipped at the first bar)."""
    b = benchmark.double()
    t = torch.arange(b.shape[0], device=b.device)

    def back(n: int) -> torch.Tensor:
        return b.index_select(0, (t - n).clamp_min(0))

    # the high of bars t - 59 .. t (clipped at bar 0): sliding windows over the series led by copies of bar 0
    peak = torch.cat([b[:1].expand(BENCH_PEAK - 1), b]).unfold(0, BENCH_PEAK, 1).amax(-1)
    return torch.stack([b / back(interval) - 1.0, b / back(BENCH_LONG) - 1.0, b / peak - 1.0], 1).float()


def master_observation(
    obs: Observation, logp: torch.Tensor, value: torch.Tensor, bench: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Master observation ``(N, obs_width)`` and joint state ``(N, 3 S)`` from the simulator observation,
    the symbol agents' masked log-probabilities ``(N, S, 7)`` and values ``(N, S)``, and the benchmark
    table ``(T, 3)``."""
    p = logp.float().exp()
    favourite = logp.argmax(-1)
    buy = ((favourite >= Action.BUY_SMALL) & (favourite <= Action.BUY_LARGE)) | (
        favourite == Action.ADD_TO_WINNER
    )
    sell = (favourite == Action.SELL_PARTIAL) | (favourite == Action.SELL_ALL)
    value = value.float()
    weights = obs.agent[..., _WEIGHT].float()
    total = weights.sum(1, keepdim=True)
    hhi = ((weights / total.clamp_min(1e-12)) ** 2).sum(1, keepdim=True) * (total > 0)
    features = torch.cat(
        [
            p.mean(1),
            p.std(1, correction=0),
            value.mean(1, keepdim=True),
            buy.float().mean(1, keepdim=True),
            sell.float().mean(1, keepdim=True),
            obs.portfolio.float(),
            hhi,
            obs.regime.float().nan_to_num(0.0),
            obs.directive_features.float(),
            bench.index_select(0, obs.bar),
        ],
        1,
    )
    joint = torch.cat([weights, obs.agent[..., _PNL].float(), value], 1)
    return features, joint


def _mlp(
    d_in: int, hidden: tuple[int, int], d_out: int, out_gain: float, g: torch.Generator
) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(d_in, hidden[0]),
        nn.LayerNorm(hidden[0]),
        nn.GELU(),
        nn.Linear(hidden[0], hidden[1]),
        nn.GELU(),
        nn.Linear(hidden[1], d_out),
    )
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        gain = out_gain if i == len(linears) - 1 else math.sqrt(2.0)
        nn.init.orthogonal_(layer.weight, gain, generator=g)
        nn.init.zeros_(layer.bias)
    return net


class MasterAgent(nn.Module):
    def __init__(
        self, cfg: MasterConfig, *, obs_dim: int, joint_dim: int, num_directives: int, seed: int = 0
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.obs_dim, self.joint_dim, self.num_directives = obs_dim, joint_dim, num_directives
        self.centralized = cfg.critic == "centralized"
        critic_in = obs_dim + (joint_dim if self.centralized else 0)
        self.actor = _mlp(obs_dim, cfg.hidden, num_directives, cfg.actor_gain, g)
        self.critic = _mlp(critic_in, cfg.hidden, 1, 1.0, g)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def value(self, obs: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, joint], -1) if self.centralized else obs
        return self.critic(x).squeeze(-1)

    def forward(self, obs: torch.Tensor, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits(obs), self.value(obs, joint)
