"""The symbol agent: a shared trunk over each (env, symbol)'s inputs, then actor and critic heads.

Inputs per (env, symbol): the bar's market input (cached 256-d encoder embedding, or the feature window
run through the encoder when it is fine-tuned), the SL probability triplet, the agent's own state, its
recent-action counts; per env (broadcast to its symbols): portfolio telemetry, regime, master directive.

    trunk   h = tanh(W_m market + W_s [sl, state, counts] + W_e env)          (B, S, trunk_dim)
    heads   per_symbol: one MLP per symbol, weights stacked on the symbol axis and applied with one
            batched product over it, einsum('bsd,sdh->bsh') (trunk_dim -> hidden -> 7, and -> 1)
            shared:     one MLP for all symbols, fed h plus a learned symbol embedding (ablation)

Initialization follows CleanRL: orthogonal weights, zero biases, hidden gain sqrt(2), actor output gain
``agent.actor_gain`` (0.1: near-uniform initial policy), critic output gain ``agent.critic_gain``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hmarl.agents.inputs import AgentTables, PolicyObs
from hmarl.agents.params import AgentConfig
from hmarl.data.windows import gather_bars
from hmarl.env.actions import NUM_ACTIONS
from hmarl.env.spec import AGENT_FEATURES

NUM_SL = 9  # SL cache channels: 3 models x (down, flat, up)
HIDDEN_GAIN = math.sqrt(2.0)


def _orthogonal(shape: tuple[int, ...], gain: float, generator: torch.Generator) -> torch.Tensor:
    """Orthogonal init of each ``(in, out)`` matrix of a ``(..., in, out)`` stack."""
    w = torch.empty(shape)
    for m in w.view(-1, *shape[-2:]):
        nn.init.orthogonal_(m, gain, generator=generator)
    return w


class BatchedMLP(nn.Module):
    """``S`` independent two-layer MLPs whose weights are stacked on the symbol axis."""

    def __init__(
        self, num_symbols: int, d_in: int, hidden: int, d_out: int, out_gain: float, g: torch.Generator
    ):
        super().__init__()
        self.w1 = nn.Parameter(_orthogonal((num_symbols, d_in, hidden), HIDDEN_GAIN, g))
        self.b1 = nn.Parameter(torch.zeros(num_symbols, 1, hidden))
        self.w2 = nn.Parameter(_orthogonal((num_symbols, hidden, d_out), out_gain, g))
        self.b2 = nn.Parameter(torch.zeros(num_symbols, 1, d_out))

    def forward(self, h: torch.Tensor, symbols: slice = slice(None)) -> torch.Tensor:
        """``(B, S, d_in)`` -> ``(B, S, d_out)``: einsum('bsd,sdh->bsh') as a batched product over S.
        ``symbols``: only that block of symbols (``h`` holds just them), e.g. one thread's share."""
        x = h.transpose(0, 1)  # (S, B, d_in)
        return self.output(torch.tanh(torch.baddbmm(self.b1[symbols], x, self.w1[symbols])), symbols)

    def output(self, hidden: torch.Tensor, symbols: slice = slice(None)) -> torch.Tensor:
        """The second layer on the hidden activations ``(S, B, hidden)`` -> ``(B, S, d_out)``."""
        return torch.baddbmm(self.b2[symbols], hidden, self.w2[symbols]).transpose(0, 1)

    @torch.no_grad()
    def shrink_output(self, symbols: torch.Tensor, factor: float) -> None:
        scale = torch.where(symbols, factor, 1.0).to(self.w2.dtype).view(-1, 1, 1)
        self.w2.mul_(scale)
        self.b2.mul_(scale)


class SharedMLP(nn.Module):
    """One two-layer MLP for all symbols; a learned symbol embedding tells them apart."""

    def __init__(
        self,
        num_symbols: int,
        d_in: int,
        hidden: int,
        d_out: int,
        out_gain: float,
        embed_dim: int,
        g: torch.Generator,
    ):
        super().__init__()
        self.symbol_embedding = nn.Parameter(torch.randn(num_symbols, embed_dim, generator=g) * 0.1)
        self.w1 = nn.Parameter(_orthogonal((d_in + embed_dim, hidden), HIDDEN_GAIN, g))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(_orthogonal((hidden, d_out), out_gain, g))
        self.b2 = nn.Parameter(torch.zeros(d_out))
        self.d_in = d_in

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        per_symbol = self.symbol_embedding @ self.w1[self.d_in :]  # (S, hidden), added to every env
        x = torch.tanh(h @ self.w1[: self.d_in] + per_symbol + self.b1)
        return x @ self.w2 + self.b2

    @torch.no_grad()
    def shrink_output(self, symbols: torch.Tensor, factor: float) -> None:
        if bool(symbols.any()):  # one head for all: any guarded symbol shrinks it
            self.w2.mul_(factor)
            self.b2.mul_(factor)


class SymbolAgent(nn.Module):
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        num_symbols: int,
        market_dim: int,
        env_dim: int,
        counts_scale: float,
        encoder: nn.Module | None = None,
        seed: int = 0,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.num_symbols = num_symbols
        self.counts_scale = counts_scale  # counts / diversity window: values in [0, 1]
        self.encoder = encoder  # fine-tuned encoder (windows -> market_dim), or None for cached embeddings
        small = (NUM_SL if cfg.use_sl_probs else 0) + len(AGENT_FEATURES) + NUM_ACTIONS
        d = cfg.trunk_dim
        self.w_market = nn.Parameter(_orthogonal((market_dim, d), HIDDEN_GAIN, g))
        self.w_small = nn.Parameter(_orthogonal((small, d), HIDDEN_GAIN, g))
        self.w_env = nn.Parameter(_orthogonal((env_dim, d), HIDDEN_GAIN, g))
        self.b_trunk = nn.Parameter(torch.zeros(d))
        if cfg.head == "per_symbol":
            self.actor = BatchedMLP(num_symbols, d, cfg.hidden, NUM_ACTIONS, cfg.actor_gain, g)
            self.critic = BatchedMLP(num_symbols, d, cfg.hidden, 1, cfg.critic_gain, g)
        else:
            e = cfg.symbol_embed_dim
            self.actor = SharedMLP(num_symbols, d, cfg.hidden, NUM_ACTIONS, cfg.actor_gain, e, g)
            self.critic = SharedMLP(num_symbols, d, cfg.hidden, 1, cfg.critic_gain, e, g)

    def market_projection(self, tables: AgentTables) -> torch.Tensor | None:
        """Frozen embeddings: the whole table through the trunk's market weights, ``(rows, S, trunk_dim)``.

        The trunk is linear in the embedding, so projecting each (bar, symbol) once and gathering the
        result is the same function as gathering first; it is cheaper whenever a batch holds more rows
        than the table (a rollout, large minibatches), and it gathers trunk_dim instead of embed_dim floats.
        """
        return tables.market @ self.w_market if tables.frozen else None

    def market_term(
        self, obs: PolicyObs, tables: AgentTables, sl: torch.Tensor, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``W_m market`` for each (row, symbol) of ``obs``: ``(B, S, trunk_dim)``."""
        if projected is None and tables.frozen and obs.bar.numel() >= tables.market.shape[0]:
            projected = self.market_projection(tables)
        if projected is not None:
            return gather_bars(projected, tables.market_rows(obs.bar))
        market = tables.market_input(obs.bar)
        if self.encoder is not None:
            market = self.encoder(market, sl)
        return market @ self.w_market

    def trunk(
        self, obs: PolicyObs, tables: AgentTables, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, S, trunk_dim)`` features of each (row, symbol)."""
        sl = tables.sl_probs(obs.bar)
        parts = [obs.agent.float(), obs.counts.float() * (1.0 / self.counts_scale)]
        if self.cfg.use_sl_probs:
            parts.insert(0, torch.nan_to_num(sl, nan=1.0 / 3.0))
        x = self.market_term(obs, tables, sl, projected) + torch.cat(parts, -1) @ self.w_small
        x = x + (obs.env.float() @ self.w_env + self.b_trunk).unsqueeze(1)
        return torch.tanh(x)

    def forward(
        self, obs: PolicyObs, tables: AgentTables, projected: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw actor logits ``(B, S, 7)`` (mask them with hmarl.agents.distributions) and values ``(B, S)``.
        ``projected``: :meth:`market_projection` of ``tables`` under the current weights (optional)."""
        h = self.trunk(obs, tables, projected)
        return self.actor(h), self.critic(h).squeeze(-1)

    def value(
        self, obs: PolicyObs, tables: AgentTables, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.critic(self.trunk(obs, tables, projected)).squeeze(-1)

    def shrink_actor(self, symbols: torch.Tensor, factor: float) -> None:
        """Entropy guard: scale the actor output layer of ``symbols`` ((S,) bool) toward uniform logits."""
        self.actor.shrink_output(symbols.to(self.actor.w2.device), factor)

    def train(self, mode: bool = True) -> SymbolAgent:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # no dropout: rollout and update must see the same function
        return self
