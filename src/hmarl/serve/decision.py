"""The decision a desk acts on, once: for the newest bar of one account, the master's directive where it is
due and every symbol agent's greedy order under the directive that stands.

The decision on a ready observation is :meth:`hmarl.agents.hierarchy.Hierarchy.decide`, the same one the
backtests and the walk-forward run (the master reads the symbol agents' intents under the directive in
force; a kept directive leaves the observation and the intents as they were); :func:`orders` turns its
log-probabilities into the desk's order table. :func:`decide` is the reference computation, everything from
scratch over the history given; :class:`hmarl.serve.decider.Decider` runs the same ``Hierarchy.decide``
kept warm between bars (prefix caches, a two-bar simulator, int8 heads), asserted equal in
tests/test_decider.py.

Across bars the master acts every ``env.master.interval`` bars and its directive holds in between
(:class:`MasterHold`, :class:`MasterBar`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import BENCH_LONG, BENCH_PEAK, benchmark_table
from hmarl.env.actions import ACTION_NAMES, BUY_FRAC, SELL_FRAC, cap_fraction, decode_directive, order_table
from hmarl.env.market import CLOSE, MarketData
from hmarl.env.params import EnvConfig
from hmarl.env.spec import Observation
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import DataError
from hmarl.serve.bundle import Bundle
from hmarl.serve.inputs import LatestInputs
from hmarl.serve.positions import Account
from hmarl.sl.calibration import calibrated_probs


# --------------------------------------------------------------------------- the decision
@torch.no_grad()
def decide(
    bundle: Bundle, inputs: LatestInputs, account: Account | None = None, hold: MasterHold | None = None
) -> list[dict]:
    """One full decision for the newest bar: SL models, encoder, master (when due), symbol agents (greedy), on
    the device of the bundle's models.

    The reference computation, everything from scratch over the history given; the
    :class:`~hmarl.serve.decider.Decider` is the same function kept warm between bars (what ``hmarl act``
    and a desk run). ``hold``: the directive in force (default: none, the master decides)."""
    cfg, device = bundle.cfg, bundle.device  # where the bundle's models are (Bundle.to)
    windows, market = inputs.windows.to(device), inputs.market.to(device)
    t = newest_bar(market)
    sl = torch.cat([calibrated_probs(m(windows), temp) for m, temp in bundle.sl_models], -1).unsqueeze(0)
    if bundle.encoder is not None:
        emb = bundle.encoder(windows.unsqueeze(0), sl)
        tables = AgentTables(emb, sl, None, device, market_offset=t, sl_offset=t)
    else:
        tables = AgentTables(windows.transpose(0, 1), sl, bundle.window, device, t - bundle.window + 1, t)
    env = MarketEnv(market, cfg.env, cfg.reward, num_envs=1, bar_range=(t, t + 2))
    obs = start_bar(env, account, hold)  # the episode starts at the newest bar
    bench = benchmark_table(market.benchmark, cfg.env.master.interval)
    h = Hierarchy(bundle.symbol_agent, tables, bundle.master, bench)
    logp, obs = h.decide(env, obs)
    return orders(cfg.env, bundle.symbols, logp[0], obs.mask[0], int(env.directive[0]), float(env.equity[0]))


# --------------------------------------------------------------------------- bars, accounts, orders
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
    obs = env.reset(  # in cash: the desk's own account, never a simulated initial purchase
        seed=0,
        directive=None if hold is None else hold.directive,
        elapsed=hold.elapsed if held else 0,
        in_cash=True,
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
        "position_cap": cap_fraction(env_cfg, cap, len(symbols)),  # of equity (cap_unit: equal_weight: / S)
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
