"""The per-bar decision a desk runs, kept warm between bars: :class:`Decider`.

Same function as the reference :func:`hmarl.act.decide` (asserted in tests/test_decider.py), organized for
latency. Everything that does not depend on the newest bar is done once, at construction or on the first
call: models in eval mode with their checks, the one-account simulator (over a two-bar market the newest
bar is copied into, instead of a simulator over the whole history per decision), the order table, the
worker thread. Per bar what remains is what the newest bar changes: the SL classifiers and the encoder over
the windows ending at it (every branch is a non-linear function of the whole window with per-position
weights, so nothing of an older bar's pass can be reused), the symbol agents, the master, the orders.

On CPU the two cores run the bar's work as two halves on two threads (one intra-op thread each): the
encoder's transformer branch on the calling thread, the SL classifiers and the other branches on the
worker; then the symbol agents' actor and critic heads likewise. Small recurrent and elementwise kernels do
not split well inside one op, and a second intra-op thread spins at barriers whenever the machine is busy.
The transformer branch runs :mod:`hmarl.encoders.inference` (same weights, cheaper kernels).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, compact
from hmarl.agents.master import BENCH_LONG, BENCH_PEAK, benchmark_table, master_observation
from hmarl.agents.symbol import BatchedMLP
from hmarl.encoders.branches import TransformerBranch
from hmarl.encoders.inference import branch_output, check_supported, scale_summary, tokens
from hmarl.encoders.model import SharedEncoder
from hmarl.env.actions import ACTION_NAMES, BUY_FRAC, SELL_FRAC, decode_directive, order_table
from hmarl.env.market import CLOSE, MarketData
from hmarl.env.params import EnvConfig
from hmarl.env.vec_env import MarketEnv, Observation
from hmarl.errors import DataError
from hmarl.positions import Account
from hmarl.sl.calibration import calibrated_probs

if TYPE_CHECKING:
    from hmarl.act import Bundle, LatestInputs


# --------------------------------------------------------------------------- shared by both decision paths
def newest_bar(market: MarketData) -> int:
    """The newest real bar of an act market (its last bar is the never-observed placeholder)."""
    return market.num_bars - 2


def bench_rows(benchmark: torch.Tensor, t: int, interval: int) -> torch.Tensor:
    """Row ``t`` of :func:`benchmark_table` from the bars it looks back at only."""
    lo = max(0, t - max(BENCH_PEAK, BENCH_LONG, interval))
    return benchmark_table(benchmark[lo : t + 1], interval)[-1]


def set_account(env: MarketEnv, account: Account) -> Observation:
    """Env 0, just reset at the newest bar, holding ``account``; returns its refreshed observation.

    What a positions file cannot tell is taken as a fresh start: the highest close since entry is
    max(entry, close), bars held 0, no drawdown or Sharpe history, no recent actions.
    """
    if len(account.shares) != env.num_symbols:
        raise DataError(f"{account.source}: {len(account.shares)} symbols, the model has {env.num_symbols}")
    dt = env.dtype
    close = env.market.table[CLOSE].index_select(0, env.t)[0]
    shares = torch.as_tensor(account.shares, dtype=dt)
    held = (shares > 0).to(dt)
    entry = torch.as_tensor(account.entry, dtype=dt) * held
    equity = account.cash + float((shares * close).sum())
    if not equity > 0:
        raise DataError(f"{account.source}: account equity {equity:.2f} at the newest close is not positive")
    env.shares[0] = shares
    env.entry[0] = entry
    env.peak_px[0] = torch.maximum(entry, close) * held
    env.cash[0] = account.cash
    env.equity[0] = equity
    env.peak_eq[0] = equity
    return env.set_directive(env.directive)


def orders(
    env_cfg: EnvConfig,
    symbols: list[str],
    logp: torch.Tensor,
    mask: torch.Tensor,
    directive: int,
    equity: float,
) -> list[dict]:
    """Greedy order per symbol from masked log-probabilities ``(S, 7)`` and masks ``(S, 7)``."""
    action = logp.argmax(-1)
    prob = logp.gather(-1, action.unsqueeze(-1)).squeeze(-1).exp()
    risk, cap, mode = decode_directive(env_cfg, directive)
    m = env_cfg.master
    label = {
        "risk_multiplier": m.risk_multipliers[risk],
        "position_cap": m.position_caps[cap],
        "mode": m.modes[mode],
        "index": directive,
    }
    table = order_table(env_cfg, torch.float64, torch.device("cpu")).tolist()
    alloc = equity * label["risk_multiplier"] * label["position_cap"]
    names = np.array(ACTION_NAMES)
    allowed = mask.numpy()
    return [
        {
            "symbol": sym,
            "action": ACTION_NAMES[a],
            "probability": round(p, 6),
            "buy_notional": round(table[BUY_FRAC][a] * alloc, 2),
            "sell_fraction": table[SELL_FRAC][a],
            "allowed": names[allowed[i]].tolist(),
            "directive": dict(label),
        }
        for i, (sym, a, p) in enumerate(zip(symbols, action.tolist(), prob.double().tolist(), strict=True))
    ]


# --------------------------------------------------------------------------- the fast path
def _one_thread() -> None:
    torch.set_num_threads(1)


def _inference(fn):
    with torch.inference_mode():
        return fn()


@contextmanager
def _intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Decider:
    """``Decider(bundle).decide(inputs, account)`` -> orders; keep one per bundle across bars.

    ``workers=2`` runs the two halves of each decision on two threads (the 2-core CPU a desk runs on);
    ``workers=1`` runs them on the calling thread with the intra-op threads torch is set to.
    """

    def __init__(self, bundle: Bundle, workers: int = 2):
        if workers not in (1, 2):
            raise ValueError(f"workers must be 1 or 2, got {workers}")
        self.bundle, self.cfg = bundle, bundle.cfg
        self.agent, self.master = bundle.symbol_agent.eval(), bundle.master.eval()
        self.encoder = bundle.encoder if bundle.encoder is not None else self.agent.encoder
        for m, _ in bundle.sl_models:
            m.eval()
        if not isinstance(self.encoder, SharedEncoder):
            raise ValueError("the bundle has no encoder (neither frozen nor the symbol agents' own)")
        self.encoder.eval()
        self.transformer = dict(self.encoder.branches.items()).get("transformer")
        if isinstance(self.transformer, TransformerBranch):
            check_supported(self.transformer)
        self.other_names = [name for name in self.encoder.branches if name != "transformer"]
        self.others = [self.encoder.branches[name] for name in self.other_names]
        self.pool = ThreadPoolExecutor(1, initializer=_one_thread) if workers == 2 else None
        self.env: MarketEnv | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

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

    # ------------------------------------------------------------------ the halves
    def _submit(self, fn, *args):
        """Run ``fn(*args)`` on the worker (under inference mode: it is per thread), or here without one;
        returns a callable giving the result."""
        if self.pool is None:
            result = fn(*args)
            return lambda: result
        return self.pool.submit(_inference, lambda: fn(*args)).result

    def _worker_half(self, windows: torch.Tensor, steps: torch.Tensor | None):
        """SL probabilities ``(1, S, 9)``, the non-transformer branches, the transformer's last scale."""
        sl = torch.cat([calibrated_probs(m(windows), temp) for m, temp in self.bundle.sl_models], -1)
        x = windows.unsqueeze(0)
        branches = [branch(x) for branch in self.others]
        last = (
            [] if steps is None else scale_summary(self.transformer, len(self.transformer.scales) - 1, steps)
        )
        return sl.unsqueeze(0), branches, last

    def _actor(self, h: torch.Tensor) -> torch.Tensor:
        """Actor logits of all symbols; per-symbol heads split in two symbol blocks, one per thread."""
        actor = self.agent.actor
        if self.pool is None or not isinstance(actor, BatchedMLP):
            return actor(h)
        half = h.shape[1] // 2
        second = self._submit(actor, h[:, half:], slice(half, None))
        return torch.cat([actor(h[:, :half], slice(0, half)), second()], 1)

    def _encoder_outputs(self, steps: torch.Tensor | None, worker) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SL probabilities and every branch's output in the encoder's order: the transformer's other scales
        here while the worker runs its half."""
        tr = self.transformer
        mine = (
            [] if tr is None else [z for i in range(len(tr.scales) - 1) for z in scale_summary(tr, i, steps)]
        )
        sl, branches, last = worker()
        by_name = dict(zip(self.other_names, branches, strict=True))
        if tr is not None:
            by_name["transformer"] = branch_output(tr, mine + last, 1, len(self.bundle.symbols))
        return sl, [by_name[name] for name in self.encoder.branches]

    # ------------------------------------------------------------------ the decision
    def decide(self, inputs: LatestInputs, account: Account | None = None) -> list[dict]:
        """Orders for the newest bar of ``inputs`` (for ``account``; default a flat ``env.initial_cash``)."""
        threads = 1 if self.pool is not None else torch.get_num_threads()
        with _intra_op_threads(threads), torch.inference_mode():
            windows = inputs.windows
            tr = self.transformer
            steps = None if tr is None else tokens(tr, windows[None])
            worker = self._submit(self._worker_half, windows, steps)
            env = self._env(inputs.market)
            obs = env.reset(seed=0)  # the newest bar, master due, flat account holding initial_cash
            if account is not None and (not account.is_flat or account.cash != self.cfg.env.initial_cash):
                obs = set_account(env, account)
            sl, outputs = self._encoder_outputs(steps, worker)
            emb = self.encoder.embed(self.encoder.fuse(torch.cat(outputs, -1)), sl)

            tables = AgentTables(emb, sl, None, torch.device("cpu"))
            projected = self.agent.market_projection(tables)
            o = compact(obs)
            h = self.agent.trunk(o, tables, projected)
            value = self._submit(lambda: self.agent.critic(h).squeeze(-1))
            logp = dist.masked_logits(self.agent.actor(h).float(), o.mask)
            mobs, _ = master_observation(obs, logp, value().float(), self.bench)
            directive = self.master.logits(mobs).argmax(-1)
            obs = env.set_directive(directive)
            o = compact(obs)
            logp = dist.masked_logits(self._actor(self.agent.trunk(o, tables, projected)).float(), o.mask)
            return orders(
                self.cfg.env,
                self.bundle.symbols,
                logp[0],
                obs.mask[0],
                int(directive[0]),
                float(env.equity[0]),
            )
