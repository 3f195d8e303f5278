"""The per-bar decision a desk runs, kept warm between bars: :class:`Decider`.

The decision of :mod:`hmarl.serve.decision` (:meth:`~hmarl.agents.hierarchy.Hierarchy.decide`; equal to
the reference :func:`~hmarl.serve.decision.decide`, asserted in tests/test_decider.py), organized for
latency. Done once, at construction or on the first call: models in eval mode with their checks, the
one-account simulator (over a two-bar market the newest bar is copied into, instead of a simulator over the
whole history per decision), the order table.

Between bars (:meth:`Decider.prepare`): every model is a function of the feature window, and ``W - 1`` rows
of the next bar's window are this bar's newest ones, so what depends on them only is computed before the
next bar arrives, like a language model's key/value cache (:mod:`hmarl.sl.prefix`,
:mod:`hmarl.encoders.prefix_branches`, :mod:`hmarl.encoders.inference`): the recurrent states after the older
rows, the attention of the older steps over each other, the convolution positions the newest row does not
reach. At the decision the newest row completes them (the results equal the models' forward within float32
rounding), then the symbol agents, the master, the orders; the heads read int8 weights where they are on
the int8 grid (:class:`hmarl.agents.int8_heads.Int8Heads`).

Across bars the master acts every ``env.master.interval`` bars and its directive holds in between, as in
training and in the walk-forward evaluation (:class:`~hmarl.serve.decision.MasterHold`): on a held bar only the symbol agents run
under the held directive; on a master bar the master reads their intents under the directive in force. A
single decision without history (``hmarl act`` without ``--state``) is a master bar under the default
directive.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.int8_heads import Int8Heads
from hmarl.encoders.branches import TransformerBranch
from hmarl.encoders.inference import check_supported, transformer_complete, transformer_prefix
from hmarl.encoders.model import SharedEncoder
from hmarl.encoders.prefix_branches import branch_complete, branch_prefix
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.runtime import torch_threads
from hmarl.serve.bundle import Bundle
from hmarl.serve.decision import MasterBar, MasterHold, bench_rows, newest_bar, orders, start_bar
from hmarl.serve.inputs import LatestInputs
from hmarl.serve.positions import Account
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.prefix import sl_complete, sl_prefix


# --------------------------------------------------------------------------- the fast path
@dataclass(frozen=True)
class Prefix:
    """What every model computes from a window's ``W - 1`` older rows (``older``, (S, W - 1, F))."""

    older: torch.Tensor
    sl: list
    branches: dict
    transformer: list | None


class Decider:
    """``Decider(bundle).decide(inputs, account)`` -> orders; keep one per bundle across bars.

    A desk's loop: ``orders = decider.decide(bar)``, send them, ``decider.prepare()`` (the next bar's
    prefix), wait for the next bar. Without ``prepare`` the next decision computes the prefix first (as
    slow as a cold start). Decisions and prefixes run on the calling thread with ``threads`` intra-op
    threads (default: torch's setting); the garbage collector is paused during a decision.
    """

    def __init__(self, bundle: Bundle, threads: int | None = None):
        self.bundle, self.cfg = bundle, bundle.cfg
        self.threads = threads
        self.agent, self.master = bundle.symbol_agent.eval(), bundle.master.eval()
        # int8 heads read their int8 weights (a quarter of the float32 bytes); others the module itself
        self.actor = Int8Heads.of(self.agent.actor) or self.agent.actor
        self.critic = Int8Heads.of(self.agent.critic) or self.agent.critic
        self.encoder = bundle.encoder if bundle.encoder is not None else self.agent.encoder
        for m, _ in bundle.sl_models:
            m.eval()
        if not isinstance(self.encoder, SharedEncoder):
            raise ValueError("the bundle has no encoder (neither frozen nor the symbol agents' own)")
        self.encoder.eval()
        self.transformer = dict(self.encoder.branches.items()).get("transformer")
        if isinstance(self.transformer, TransformerBranch):
            check_supported(self.transformer)
        self.others = {name: b for name, b in self.encoder.branches.items() if name != "transformer"}
        self.env: MarketEnv | None = None
        self._older: torch.Tensor | None = None  # the next bar's older rows, until prepared
        self._prefix_ready: Prefix | None = None
        self.master_bar: MasterBar | None = None  # a desk running one process per bar restores it

    @contextmanager
    def _running(self):
        """This Decider's intra-op threads, inference mode."""
        with torch_threads(self.threads), torch.inference_mode():  # 0: torch's current setting
            yield

    # ------------------------------------------------------------------ prefix state (between bars)
    def _prefix(self, older: torch.Tensor) -> Prefix:
        x = older.unsqueeze(0)
        tr = self.transformer
        return Prefix(
            older,
            [sl_prefix(m, older) for m, _ in self.bundle.sl_models],
            {name: branch_prefix(b, x) for name, b in self.others.items()},
            None if tr is None else transformer_prefix(tr, x),
        )

    def prepare(self) -> None:
        """Compute the next bar's prefix from the newest ``W - 1`` rows of the last decision's window."""
        if self._older is not None:
            with self._running():
                self._prefix_ready = self._prefix(self._older)
            self._older = None

    def _prefix_for(self, windows: torch.Tensor) -> Prefix:
        """The prepared prefix when its rows are ``windows``' older rows, else computed now from them (not
        prepared, or a cold start: a pending preparation is dropped, it would compute the same or the wrong
        rows)."""
        ready, self._prefix_ready, self._older = self._prefix_ready, None, None
        if ready is not None and torch.equal(ready.older, windows[:, :-1]):
            return ready
        return self._prefix(windows[:, :-1].clone())

    # ------------------------------------------------------------------ per-bar state
    def _env(self, source: MarketData) -> MarketEnv:
        """The one-account simulator over two bars (newest, placeholder), built on the first call."""
        s, r = source.num_symbols, source.regime.shape[1]
        env = self.env
        if env is None or env.market.regime.shape[1] != r or env.num_symbols != s:
            market = MarketData(
                table=torch.ones(5, 2, s, dtype=source.table.dtype),
                benchmark=torch.ones(2, dtype=source.benchmark.dtype),
                regime=torch.zeros(2, r),
                bars_per_year=source.bars_per_year,
                symbols=list(source.symbols),
                timestamps=np.arange(2),
            )
            env = self.env = MarketEnv(market, self.cfg.env, self.cfg.reward, num_envs=1, bar_range=(0, 2))
            self.bench = torch.zeros(2, 3)
        t = newest_bar(source)
        env.market.table.copy_(source.table[:, t : t + 1].expand(-1, 2, -1))
        env.market.regime.copy_(source.regime[t].expand(2, -1))
        self.bench.copy_(bench_rows(source.benchmark, t, self.cfg.env.master.interval).expand(2, -1))
        return env

    def _embedding(self, prefix: Prefix, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's embedding ``(1, S, embed_dim)`` and the SL probabilities ``(1, S, 9)`` of the
        newest bar, completing the prefix."""
        sl = [
            calibrated_probs(sl_complete(m, state, windows), temp)
            for (m, temp), state in zip(self.bundle.sl_models, prefix.sl, strict=True)
        ]
        sl = torch.cat(sl, -1).unsqueeze(0)
        x = windows.unsqueeze(0)
        outputs = {name: branch_complete(b, prefix.branches[name], x) for name, b in self.others.items()}
        if self.transformer is not None:
            outputs["transformer"] = transformer_complete(self.transformer, prefix.transformer, x)
        learned = self.encoder.fuse(torch.cat([outputs[name] for name in self.encoder.branches], -1))
        return self.encoder.embed(learned, sl), sl

    # ------------------------------------------------------------------ the decision
    def decide(self, inputs: LatestInputs, account: Account | None = None) -> list[dict]:
        """Orders for the newest bar of ``inputs`` (for ``account``; default a flat ``env.initial_cash``).

        Across bars the master's directive holds for ``env.master.interval`` bars, counted on the bars'
        timestamps from the bar it chose at; a bar deciding again (another account) starts from what held
        before that bar; a history without the master's bar starts afresh (the master due)."""
        collecting = gc.isenabled()
        gc.disable()  # a collection inside the decision would be its slowest part
        try:
            hold = self.hold_for(inputs.market)
            with self._running():
                result, master_acted = self._decide(inputs, account, hold)
        finally:
            if collecting:
                gc.enable()
        if master_acted:
            newest = int(inputs.market.timestamps[newest_bar(inputs.market)])
            self.master_bar = MasterBar(newest, result[0]["directive"]["index"], hold)
        self._older = inputs.windows[:, 1:].clone()  # the next bar's older rows
        return result

    def hold_for(self, market: MarketData) -> MasterHold | None:
        """The directive holding at the newest bar of ``market`` (None: none, the master decides afresh)."""
        last = self.master_bar
        if last is None:
            return None
        t = newest_bar(market)
        at = np.flatnonzero(np.asarray(market.timestamps[: t + 1]) == last.timestamp)
        if not len(at):
            return None
        elapsed = t - int(at[-1])
        return last.before if elapsed == 0 else MasterHold(last.directive, elapsed)

    def _decide(
        self, inputs: LatestInputs, account: Account | None, hold: MasterHold | None
    ) -> tuple[list[dict], bool]:
        windows = inputs.windows
        emb, sl = self._embedding(self._prefix_for(windows), windows)
        env = self._env(inputs.market)
        obs = start_bar(env, account, hold)
        tables = AgentTables(emb, sl, None, torch.device("cpu"))
        h = Hierarchy(self.agent, tables, self.master, self.bench, heads=(self.actor, self.critic))
        due = bool(obs.master_due[0])
        logp, obs = h.decide(env, obs)
        result = orders(
            self.cfg.env,
            self.bundle.symbols,
            logp[0],
            obs.mask[0],
            int(env.directive[0]),
            float(env.equity[0]),
        )
        return result, due
