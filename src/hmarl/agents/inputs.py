"""What the symbol agent observes, and the read-only tables it gathers market inputs from by bar index.

The simulator's :class:`~hmarl.env.spec.Observation` carries the bar index and small state. The policy
adds, per (env, symbol), the bar's market input (the cached encoder embedding, or the feature window for a
fine-tuned encoder) and the SL probability triplet, both gathered from :class:`AgentTables` by bar.

:class:`PolicyObs` is the compact form the rollout buffer stores (float16 state, uint8 counts, bool mask).
The policy acts on the *stored* form (:func:`compact` rounds through the storage dtypes), so the PPO update
re-evaluates exactly the inputs the actions were sampled from.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from hmarl.data.windows import gather_bars, gather_windows
from hmarl.env.spec import DIRECTIVE_FEATURES, PORTFOLIO_FEATURES, Observation

STATE_DTYPE = torch.float16


class PolicyObs(NamedTuple):
    bar: torch.Tensor  # (B,) int64
    agent: torch.Tensor  # (B, S, 7) float16 per-agent state
    counts: torch.Tensor  # (B, S, 7) uint8 executed actions in the diversity window
    mask: torch.Tensor  # (B, S, 7) bool allowed actions
    env: torch.Tensor  # (B, P + R + 3) float16 portfolio telemetry, regime, directive features


def env_width(num_regime: int) -> int:
    return len(PORTFOLIO_FEATURES) + num_regime + len(DIRECTIVE_FEATURES)


def compact(obs: Observation) -> PolicyObs:
    """The storage form of a simulator observation (the policy's actual input)."""
    env = torch.cat([obs.portfolio, obs.regime, obs.directive_features], 1)
    return PolicyObs(obs.bar, obs.agent.to(STATE_DTYPE), obs.action_counts, obs.mask, env.to(STATE_DTYPE))


class AgentTables:
    """Per-bar inputs on the policy's device: ``market`` (embeddings ``(T, S, E)`` or normalized features
    ``(T, S, F)`` for windows) and ``sl`` probabilities ``(T, S, 9)`` (NaN: no prediction).

    :meth:`restrict` keeps only the bars one run can visit (row = bar - offset); a frozen embedding table
    is then held as float32 so the policy can project all of it at once
    (:meth:`hmarl.agents.symbol.SymbolAgent.market_projection`).
    """

    def __init__(
        self,
        market: np.ndarray | torch.Tensor,
        sl: np.ndarray | torch.Tensor,
        window: int | None,
        device: torch.device,
        market_offset: int = 0,
        sl_offset: int = 0,
    ):
        if isinstance(market, np.ndarray):
            # float16 embeddings stay float16 (half the memory); NaN rows (no embedding) become 0
            dtype = torch.float16 if market.dtype == np.float16 else torch.float32
            market = torch.from_numpy(np.nan_to_num(np.asarray(market), nan=0.0, posinf=0.0, neginf=0.0)).to(
                dtype
            )
        if isinstance(sl, np.ndarray):
            sl = torch.from_numpy(np.array(sl, dtype=np.float32))
        self.market = market.to(device)
        self.sl = sl.to(device)
        self.window = window  # None: market is an embedding table; else the window length to gather
        self.market_offset, self.sl_offset = market_offset, sl_offset  # bar of each table's row 0

    @property
    def frozen(self) -> bool:
        return self.window is None

    def restrict(self, lo: int, hi: int) -> AgentTables:
        """Tables of bars ``[lo, hi)`` only (windows keep the ``window - 1`` bars before ``lo``)."""
        start = lo - (self.window - 1 if self.window else 0)
        if start < self.market_offset or hi > self.market_offset + self.market.shape[0]:
            raise IndexError(f"bars [{lo}, {hi}) are outside the table's bars")
        market = self.market[start - self.market_offset : hi - self.market_offset]
        sl = self.sl[lo - self.sl_offset : hi - self.sl_offset]
        return AgentTables(
            market.float() if self.frozen else market,
            sl,
            self.window,
            self.market.device,
            market_offset=start,
            sl_offset=lo,
        )

    def market_rows(self, bars: torch.Tensor) -> torch.Tensor:
        return bars - self.market_offset

    def market_input(self, bars: torch.Tensor) -> torch.Tensor:
        """``(B, S, E)`` embeddings or ``(B, S, W, F)`` windows of ``bars`` (B,), float32."""
        if self.frozen:
            return gather_bars(self.market, self.market_rows(bars)).float()
        return gather_windows(self.market, self.market_rows(bars), self.window)

    def sl_probs(self, bars: torch.Tensor) -> torch.Tensor:
        return gather_bars(self.sl, bars - self.sl_offset)
