"""The two levels acting together: frozen symbol agents under a master directive, one env step at a time.

Used by the master's trainer, its held-out backtest and ``hmarl act``. Per decision bar: the symbol agents
run on the observation under the current directive (their intents feed the master), the master picks a
directive where it is due, the simulator applies it (allocations and masks change) and the symbol agents
act on the refreshed observation.
"""

from __future__ import annotations

import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, compact
from hmarl.agents.master import MasterAgent, master_observation
from hmarl.agents.symbol import SymbolAgent
from hmarl.env.spec import Observation


class Hierarchy:
    def __init__(
        self,
        symbols: SymbolAgent,
        tables: AgentTables,
        master: MasterAgent,
        bench: torch.Tensor,
        symbol_greedy: bool = False,
    ):
        self.symbols, self.tables, self.master, self.bench = symbols, tables, master, bench
        self.symbol_greedy = symbol_greedy
        with torch.no_grad():
            self.projected = symbols.market_projection(tables)

    @torch.no_grad()
    def symbol_outputs(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked log-probabilities ``(N, S, 7)`` and values ``(N, S)`` of the frozen symbol agents."""
        o = compact(obs)
        logits, value = self.symbols(o, self.tables, self.projected)
        return dist.masked_logits(logits.float(), o.mask), value.float()

    @torch.no_grad()
    def master_inputs(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        logp, value = self.symbol_outputs(obs)
        return master_observation(obs, logp, value, self.bench)

    def symbol_actions(self, obs: Observation, generator: torch.Generator | None) -> torch.Tensor:
        logp, _ = self.symbol_outputs(obs)
        return logp.argmax(-1) if self.symbol_greedy else dist.sample(logp, generator)

    def director(self, greedy: bool = True, generator: torch.Generator | None = None):
        """``obs -> directive (N,)``: the master's choice (greedy or sampled)."""

        @torch.no_grad()
        def decide(obs: Observation) -> torch.Tensor:
            mobs, _ = self.master_inputs(obs)
            logits = self.master.logits(mobs)
            return logits.argmax(-1) if greedy else dist.sample(torch.log_softmax(logits, -1), generator)

        return decide
