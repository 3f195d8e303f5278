"""The two levels acting together: frozen symbol agents under a master directive, one env step at a time.

Used by the master's trainer and, through :meth:`Hierarchy.decide` (the one decision of a bar), by the
backtests, the walk-forward evaluation and the desk (:mod:`hmarl.serve.decision`). Per decision bar: the
symbol agents run on the observation under the current directive (their intents feed the master), the
master picks a directive where it is due, the simulator applies it (allocations and masks change) and the
symbol agents act on the refreshed observation.
"""

from __future__ import annotations

from collections.abc import Callable

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
        heads: tuple[Callable, Callable] | None = None,
    ):
        """``heads``: ``(actor, critic)`` run on the symbol agents' trunk in place of their own modules, the
        same function (a desk's int8 heads, :class:`hmarl.agents.int8_heads.Int8Heads`)."""
        self.symbols, self.tables, self.master, self.bench = symbols, tables, master, bench
        self.symbol_greedy, self.heads = symbol_greedy, heads
        with torch.no_grad():
            self.projected = symbols.market_projection(tables)

    @torch.no_grad()
    def symbol_outputs(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked log-probabilities ``(N, S, 7)`` and values ``(N, S)`` of the frozen symbol agents."""
        o = compact(obs)
        if self.heads is None:
            logits, value = self.symbols(o, self.tables, self.projected)
        else:
            actor, critic = self.heads
            h = self.symbols.trunk(o, self.tables, self.projected)
            value = critic(h).squeeze(-1)  # before the actor: its weights then stay in cache
            logits = actor(h)
        return dist.masked_logits(logits.float(), o.mask), value.float()

    @torch.no_grad()
    def symbol_logp(self, obs: Observation) -> torch.Tensor:
        """The masked log-probabilities of :meth:`symbol_outputs` alone (the critic is not run)."""
        o = compact(obs)
        actor = self.symbols.actor if self.heads is None else self.heads[0]
        return dist.masked_logits(actor(self.symbols.trunk(o, self.tables, self.projected)).float(), o.mask)

    @torch.no_grad()
    def master_inputs(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        logp, value = self.symbol_outputs(obs)
        return master_observation(obs, logp, value, self.bench)

    def symbol_actions(self, obs: Observation, generator: torch.Generator | None) -> torch.Tensor:
        logp, _ = self.symbol_outputs(obs)
        return dist.choose(logp, self.symbol_greedy, generator)

    @torch.no_grad()
    def decide(self, env, obs: Observation) -> tuple[torch.Tensor, Observation]:
        """The decision of a bar for every env of ``env`` (a :class:`~hmarl.env.vec_env.MarketEnv`):
        ``(masked log-probabilities (N, S, 7), the observation they read)``.

        Where the master is due it reads the symbol agents' intents under the directive in force and picks
        greedily. A kept directive leaves the observation and the intents as they were (re-applying it
        observes the same state again); a new one is applied and the symbol agents act under it (only
        their actor runs then)."""
        logp = None
        if bool(obs.master_due.any()):
            logp, value = self.symbol_outputs(obs)
            chosen = self.master_choice(obs, logp, value)
            if bool(((chosen != env.directive) & obs.master_due).any()):
                obs = env.set_directive(chosen)
                logp = None
        if logp is None:
            logp = self.symbol_logp(obs)
        return logp, obs

    def director(self, greedy: bool = True, generator: torch.Generator | None = None):
        """``obs -> directive (N,)``: the master's choice (greedy or sampled)."""

        @torch.no_grad()
        def decide(obs: Observation) -> torch.Tensor:
            return self.master_choice(obs, *self.symbol_outputs(obs), greedy, generator)

        return decide

    @torch.no_grad()
    def master_choice(
        self,
        obs: Observation,
        logp: torch.Tensor,
        value: torch.Tensor,
        greedy: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The master's directive ``(N,)`` from the symbol agents' outputs under the directive in force."""
        mobs, _ = master_observation(obs, logp, value, self.bench)
        logits = self.master.logits(mobs)
        return logits.argmax(-1) if greedy else dist.sample(torch.log_softmax(logits, -1), generator)
