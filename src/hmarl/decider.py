"""The per-bar decision a desk runs, kept warm between bars: :class:`Decider`.

Same function as the reference :func:`hmarl.act.decide` (asserted in tests/test_decider.py), organized for
latency. Done once, at construction or on the first call: models in eval mode with their checks, the
one-account simulator (over a two-bar market the newest bar is copied into, instead of a simulator over the
whole history per decision), the order table.

Between bars (:meth:`Decider.prepare`): every model is a function of the feature window, and ``W - 1`` rows
of the next bar's window are this bar's newest ones, so what depends on them only is computed before the
next bar arrives, like a language model's key/value cache (:mod:`hmarl.sl.prefix`,
:mod:`hmarl.encoders.prefix_branches`, :mod:`hmarl.encoders.inference`): the recurrent states after the older
rows, the attention of the older steps over each other, the convolution positions the newest row does not
reach. At the decision the newest row completes them (the results equal the models' forward within float32
rounding), then the symbol agents, the master, the orders.

Across bars the master acts every ``env.master.interval`` bars and its directive holds in between, as in
training and in the walk-forward evaluation (:class:`MasterHold`): on a held bar only the symbol agents run
under the held directive; on a master bar the master reads their intents under the directive in force. A
single decision without history (``hmarl act`` without ``--state``) is a master bar under the default
directive.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, compact
from hmarl.agents.int8_heads import Int8Heads
from hmarl.agents.master import BENCH_LONG, BENCH_PEAK, benchmark_table, master_observation
from hmarl.encoders.branches import TransformerBranch
from hmarl.encoders.inference import check_supported, transformer_complete, transformer_prefix
from hmarl.encoders.model import SharedEncoder
from hmarl.encoders.prefix_branches import branch_complete, branch_prefix
from hmarl.env.actions import ACTION_NAMES, BUY_FRAC, SELL_FRAC, decode_directive, order_table
from hmarl.env.market import CLOSE, MarketData
from hmarl.env.params import EnvConfig
from hmarl.env.spec import Observation
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import DataError
from hmarl.positions import Account
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.prefix import sl_complete, sl_prefix

if TYPE_CHECKING:
    from hmarl.act import LatestInputs
    from hmarl.bundle import Bundle


# --------------------------------------------------------------------------- shared by both decision paths
def newest_bar(market: MarketData) -> int:
    """The newest real bar of an act market (its last bar is the never-observed placeholder)."""
    return market.num_bars - 2


def bench_rows(benchmark: torch.Tensor, t: int, interval: int) -> torch.Tensor:
    """Row ``t`` of :func:`benchmark_table` from the bars it looks back at only."""
    lo = max(0, t - max(BENCH_PEAK, BENCH_LONG, interval))
    return benchmark_table(benchmark[lo : t + 1], interval)[-1]


@dataclass(frozen=True)
class MasterHold:
    """The directive the master chose ``elapsed`` bars before the newest bar (it acts every
    ``env.master.interval`` bars and the directive holds in between, as in training and evaluation)."""

    directive: int
    elapsed: int


@dataclass(frozen=True)
class MasterBar:
    """The master's last decision: the bar (timestamp, ns since the epoch) it chose ``directive`` at, and
    what held before that bar (a later decision of the same bar starts from it)."""

    timestamp: int
    directive: int
    before: MasterHold | None


def start_bar(env: MarketEnv, account: Account | None, hold: MasterHold | None) -> Observation:
    """Env 0 reset at the newest bar, holding ``account`` (None: a flat ``initial_cash``) under ``hold``
    (None: the default directive, the master due); returns its observation.

    What a positions file cannot tell is taken as a fresh start: the highest close since entry is
    max(entry, close), bars held 0, no drawdown or Sharpe history, no recent actions. With ``hold`` the
    master is due again ``interval`` bars after it chose (it then sees the intents under the held
    directive); before that the held directive stands.
    """
    held = hold is not None and hold.elapsed < env.cfg.master.interval  # the master is not due
    obs = env.reset(
        seed=0,
        directive=None if hold is None else hold.directive,
        elapsed=hold.elapsed if held else 0,
        in_cash=True,  # the live account is set below: no simulated initial purchase (env.initial_position)
    )
    if account is not None and (not account.is_flat or account.cash != env.cfg.initial_cash):
        _set_account(env, account)
        obs = env.set_directive(env.directive)  # observed again with the account
    return obs


def _set_account(env: MarketEnv, account: Account) -> None:
    if len(account.shares) != env.num_symbols:
        raise DataError(f"{account.source}: {len(account.shares)} symbols, the model has {env.num_symbols}")
    dt = env.dtype
    close = env.market.table[CLOSE].index_select(0, env.t)[0]
    shares = torch.as_tensor(account.shares, dtype=dt, device=env.device)
    held = (shares > 0).to(dt)
    entry = torch.as_tensor(account.entry, dtype=dt, device=env.device) * held
    equity = account.cash + float((shares * close).sum())
    if not (math.isfinite(equity) and equity > 0):
        raise DataError(
            f"{account.source}: account equity {equity:.2f} at the newest close is not a positive finite value"
        )
    env.shares[0] = shares
    env.entry[0] = entry
    env.peak_px[0] = torch.maximum(entry, close) * held
    env.cash[0] = account.cash
    env.equity[0] = equity
    env.peak_eq[0] = equity


_ORDER_FRACTIONS: dict[str, tuple[list, list]] = {}


def _order_fractions(env_cfg: EnvConfig) -> tuple[list, list]:
    """Per action: the fraction of the allocation bought and of the shares sold (the simulator's table),
    built once per configuration."""
    key = env_cfg.model_dump_json()  # the config is frozen but holds lists: not hashable itself
    if key not in _ORDER_FRACTIONS:
        table = order_table(env_cfg, torch.float64, torch.device("cpu")).tolist()
        _ORDER_FRACTIONS[key] = table[BUY_FRAC], table[SELL_FRAC]
    return _ORDER_FRACTIONS[key]


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
    buy, sell = _order_fractions(env_cfg)
    alloc = equity * label["risk_multiplier"] * label["position_cap"]
    if not math.isfinite(alloc) or not bool(torch.isfinite(prob).all()):
        raise DataError(f"account equity {equity:g}: the orders' sizes or probabilities would not be finite")
    notional = [round(frac * alloc, 2) for frac in buy]  # per action
    # each symbol's mask row as a 7-bit code: names of the allowed actions built once per distinct row
    codes = (mask.long() << torch.arange(mask.shape[-1], device=mask.device)).sum(-1).tolist()
    allowed = {c: [n for i, n in enumerate(ACTION_NAMES) if c >> i & 1] for c in set(codes)}
    return [
        {
            "symbol": sym,
            "action": ACTION_NAMES[a],
            "probability": round(p, 6),
            "buy_notional": notional[a],
            "sell_fraction": sell[a],
            "allowed": list(allowed[c]),
            "directive": dict(label),
        }
        for sym, a, p, c in zip(symbols, action.tolist(), prob.double().tolist(), codes, strict=True)
    ]


# --------------------------------------------------------------------------- the fast path
@contextmanager
def _intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        with _intra_op_threads(self.threads or torch.get_num_threads()), torch.inference_mode():
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
        projected = self.agent.market_projection(tables)
        due = bool(obs.master_due[0])
        logp = None  # the agents' intents under the directive that stands, once known
        if due:  # the master reads the agents' intents under the directive in force
            o = compact(obs)
            h = self.agent.trunk(o, tables, projected)
            value = self.critic(h).squeeze(-1).float()  # before the actor: its weights stay in cache
            logp = dist.masked_logits(self.actor(h).float(), o.mask)  # for its second pass below
            mobs, _ = master_observation(obs, logp, value, self.bench)
            chosen = self.master.logits(mobs).argmax(-1)
            # a kept directive leaves the observation and the intents as they were
            if int(chosen[0]) != int(env.directive[0]):
                obs = env.set_directive(chosen)
                logp = None
        if logp is None:
            o = compact(obs)
            h = self.agent.trunk(o, tables, projected)
            logp = dist.masked_logits(self.actor(h).float(), o.mask)
        result = orders(
            self.cfg.env,
            self.bundle.symbols,
            logp[0],
            obs.mask[0],
            int(env.directive[0]),
            float(env.equity[0]),
        )
        return result, due
