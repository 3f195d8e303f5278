"""Slow, obvious reference of the market simulator: plain Python loops over envs and symbols.

It implements the rules as written in the hmarl.env module docstrings, one env and one symbol at a
time, with Python floats (IEEE doubles), and is used by the parity test and the throughput benchmark.
It shares nothing with the batched code except the configuration, the market arrays and the torch
generator stream that draws episode starts (one draw of ``num_envs`` starts per reset/step call).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

from hmarl.env.params import MASTER_COMPONENTS, REWARD_COMPONENTS, EnvConfig, RewardConfig

HOLD, BUY_S, BUY_M, BUY_L, SELL_P, SELL_ALL, ADD = range(7)
BUYS = (BUY_S, BUY_M, BUY_L)
SELLS = (SELL_P, SELL_ALL)
EPS_SHARPE = 1e-8
TINY = 1e-12


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


class _Agent:
    def __init__(self, window: int):
        self.shares = 0.0
        self.entry = 0.0
        self.peak = 0.0  # highest of the average entry and the closes since opening
        self.hold = 0
        self.ema_m = 0.0
        self.ema_v = 0.0
        self.last = HOLD
        self.run = 0
        self.window = deque(maxlen=window)  # executed actions of this episode's last `window` steps
        self.seen = set()


class _Account:
    def __init__(self, num_symbols: int, cash: float, start: int, directive: int, window: int):
        self.agents = [_Agent(window) for _ in range(num_symbols)]
        self.cash = cash
        self.equity = cash
        self.peak_equity = cash
        self.max_dd = 0.0
        self.port_m = 0.0
        self.port_v = 0.0
        self.t = start
        self.start = start
        self.k = 0
        self.directive = directive


class ReferenceEnv:
    def __init__(
        self,
        table: np.ndarray,
        benchmark: np.ndarray,
        bars_per_year: float,
        env_cfg: EnvConfig,
        reward_cfg: RewardConfig,
        num_envs: int,
        bar_range: tuple[int, int],
        seed: int = 0,
        cash_rate: np.ndarray | None = None,  # (T,) annual rate on positive cash; None: env.cash_rate.annual
    ):
        self.open, self.close, self.tradable, self.sigma, self.adv = (
            np.asarray(x, dtype=np.float64) for x in table
        )
        self.bench = np.asarray(benchmark, dtype=np.float64)
        rate = env_cfg.cash_rate.annual if cash_rate is None else cash_rate
        self.cash_rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), self.bench.shape)
        self.cfg, self.rcfg = env_cfg, reward_cfg
        self.n, self.s = num_envs, self.open.shape[1]
        self.lo, self.hi = bar_range
        self.start_hi = max(self.lo, self.hi - 1 - env_cfg.episode_length)
        self.bars_per_year = bars_per_year
        self.generator = torch.Generator().manual_seed(seed)
        m = env_cfg.master
        self.grid = []
        for risk in m.risk_multipliers:
            for cap in m.position_caps:
                for frac in m.max_open_fraction:
                    self.grid.append((risk, cap, float(min(max(1, round(frac * self.s)), self.s))))
        r, c, mode = m.default
        self.default = (r * len(m.position_caps) + c) * len(m.modes) + mode
        self.weights = reward_cfg.weight_vector()
        self.master_weights = reward_cfg.master_weight_vector()
        self.alpha = 2.0 / (reward_cfg.sharpe_window + 1.0)
        self.fee = env_cfg.commission_bps_round_trip / 2.0 / 1e4
        self.accounts: list[_Account] = []
        self.done = [False] * num_envs

    # ----------------------------------------------------------------- helpers
    def _starts(self) -> list[int]:
        draws = torch.randint(self.lo, self.start_hi + 1, (self.n,), generator=self.generator)
        return [int(x) for x in draws]

    def _new_account(self, start: int) -> _Account:
        return _Account(self.s, self.cfg.initial_cash, start, self.default, self.cfg.diversity_window)

    def reset(self) -> dict:
        self.accounts = [self._new_account(start) for start in self._starts()]
        self.done = [False] * self.n
        return self.observe()

    def decision(self, acc: _Account) -> dict:
        """Allocation, buying power, open-position count and masks at the account's bar."""
        risk, cap, limit = self.grid[acc.directive]
        t = acc.t
        alloc = acc.equity * risk * cap
        bp = acc.cash + ((self.cfg.max_leverage - 1.0) * acc.equity if self.cfg.allow_leverage else 0.0)
        open_count = sum(1 for ag in acc.agents if ag.shares > 0)
        masks = []
        for j, ag in enumerate(acc.agents):
            tradable = self.tradable[t, j] > 0
            holding = ag.shares > 0
            close = self.close[t, j]
            m = [True] + [False] * 6
            if tradable and not holding and open_count < limit:
                for b, frac in zip(BUYS, self.cfg.buy_fractions, strict=True):
                    m[b] = bp >= alloc * frac * (1.0 + self.fee)
            if tradable and holding:
                m[SELL_P] = m[SELL_ALL] = True
                room = alloc - ag.shares * close
                add_notional = min(room, alloc * self.cfg.add_fraction)
                m[ADD] = (
                    close > ag.entry * (1.0 + self.cfg.winner_threshold)
                    and room > alloc * self.cfg.min_order_fraction
                    and bp >= add_notional * (1.0 + self.fee)
                )
            masks.append(m)
        return {"alloc": alloc, "bp": bp, "open_count": open_count, "limit": limit, "masks": masks}

    def observe(self) -> dict:
        masks, agent_feats, counts = [], [], []
        for acc in self.accounts:
            dec = self.decision(acc)
            masks.append(dec["masks"])
            rows, crow = [], []
            for j, ag in enumerate(acc.agents):
                close = self.close[acc.t, j]
                value = ag.shares * close
                holding = ag.shares > 0
                rows.append(
                    [
                        value / acc.equity,
                        value / dec["alloc"],
                        (ag.entry / close - 1.0) if holding else 0.0,
                        (close - ag.entry) * ag.shares / acc.equity,
                        ag.hold / self.cfg.episode_length,
                        (1.0 - close / ag.peak) if holding else 0.0,
                        self.tradable[acc.t, j],
                    ]
                )
                crow.append([list(ag.window).count(a) for a in range(7)])
            agent_feats.append(rows)
            counts.append(crow)
        return {
            "bar": np.array([acc.t for acc in self.accounts]),
            "mask": np.array(masks, dtype=bool),
            "agent": np.array(agent_feats),
            "action_counts": np.array(counts),
            "directive": np.array([acc.directive for acc in self.accounts]),
        }

    # ----------------------------------------------------------------- step
    def step(self, actions: np.ndarray) -> dict:
        n, s, c = self.n, self.s, len(REWARD_COMPONENTS)
        out = {
            "reward": np.zeros((n, s)),
            "components": np.zeros((c, n, s)),
            "master_reward": np.zeros(n),
            "master_components": np.zeros((len(MASTER_COMPONENTS), n)),
            "executed": np.zeros((n, s), dtype=np.int64),
            "cost": np.zeros((n, s)),
            "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool),
        }
        starts = self._starts()
        for i in range(n):
            if self.done[i]:  # next-step autoreset: the action is ignored, a new episode starts
                self.accounts[i] = self._new_account(starts[i])
                self.done[i] = False
                continue
            self._step_account(i, [int(a) for a in actions[i]], out)
        out["obs"] = self.observe()
        return out

    def _step_account(self, i: int, actions: list[int], out: dict) -> None:
        cfg, rcfg = self.cfg, self.rcfg
        acc = self.accounts[i]
        dec = self.decision(acc)
        alloc, t, t1 = dec["alloc"], acc.t, min(acc.t + 1, len(self.open) - 1)
        slots = dec["limit"] - dec["open_count"]
        fee = self.fee
        equity0 = acc.equity

        # decision: mask, repetition limit, cancellation when untradable at the fill bar
        orders = []
        opened = 0
        for j, ag in enumerate(acc.agents):
            a = actions[j]
            a1 = a if dec["masks"][j][a] else HOLD
            forced = a1 != HOLD and a1 == ag.last and ag.run >= cfg.max_consecutive_actions
            a3 = HOLD if forced else a1
            if self.tradable[t1, j] <= 0:
                a3 = HOLD
            close0 = self.close[t, j]
            q_sell, want = 0.0, 0.0
            if a3 in SELLS:
                frac = cfg.sell_partial_fraction if a3 == SELL_P else 1.0
                if ag.shares * close0 * (1.0 - frac) < alloc * cfg.min_order_fraction:
                    frac = 1.0  # the remainder would be dust: sell everything
                q_sell = ag.shares * frac
            if a3 in BUYS:
                opened += 1
                if opened <= slots:
                    want = cfg.buy_fractions[BUYS.index(a3)] * alloc
            elif a3 == ADD:
                want = min(alloc * cfg.add_fraction, max(alloc - ag.shares * close0, 0.0))
            slip = min(
                cfg.slippage_bps / 1e4
                + cfg.slippage_vol_coef * self.sigma[t, j]
                + cfg.slippage_impact_coef * (want + q_sell * close0) / self.adv[t, j],
                cfg.slippage_max,
            )
            orders.append(
                {
                    "a": a1 if not forced else HOLD,
                    "a3": a3,
                    "forced": forced,
                    "q_sell": q_sell,
                    "want": want,
                    "slip": slip,
                }
            )

        # fills at the open of t+1: sells first, then buys scaled pro rata to the buying power
        proceeds_total, need = 0.0, 0.0
        for j, o in enumerate(orders):
            open1 = self.open[t1, j]
            o["proceeds"] = o["q_sell"] * open1 * (1.0 - o["slip"]) * (1.0 - fee)
            proceeds_total += o["proceeds"]
            need += o["want"] * (1.0 + o["slip"]) * (1.0 + fee)
        available = dec["bp"] + proceeds_total
        scale = _clip(available / max(need, 1e-12), 0.0, 1.0)
        cash = acc.cash
        for j, o in enumerate(orders):
            open1 = self.open[t1, j]
            notional = o["want"] * scale
            o["q_buy"] = notional / open1
            o["px_buy"] = open1 * (1.0 + o["slip"])
            o["cost"] = (o["q_sell"] * open1 - o["proceeds"]) + notional * (
                (1.0 + o["slip"]) * (1.0 + fee) - 1.0
            )
            cash += o["proceeds"] - notional * (1.0 + o["slip"]) * (1.0 + fee)
            o["executed"] = o["a3"] if (notional > 0 or o["q_sell"] > 0) else HOLD
        # borrowing pays env.financing_rate; positive cash earns the cash rate of the decision bar t
        financing = max(-cash, 0.0) * cfg.financing_rate / self.bars_per_year
        financing -= max(cash, 0.0) * (self.cash_rate[t] / self.bars_per_year)
        cash -= financing

        # positions, mark at close t+1, rewards
        values1 = []
        for j, (ag, o) in enumerate(zip(acc.agents, orders, strict=True)):
            close0, close1, open1 = self.close[t, j], self.close[t1, j], self.open[t1, j]
            shares0, entry0 = ag.shares, ag.entry
            remaining = shares0 - o["q_sell"]
            shares1 = remaining + o["q_buy"]
            if shares1 > 0:
                entry1 = (remaining * entry0 + o["q_buy"] * o["px_buy"]) / shares1
                peak1 = max(ag.peak if remaining > 0 else 0.0, entry1, close1)
                hold1 = ag.hold + 1
            else:
                entry1, peak1, hold1 = 0.0, 0.0, 0
            value0, value1 = shares0 * close0, shares1 * close1
            roi = close0 / entry0 - 1.0 if entry0 > 0 else 0.0
            o.update(
                pnl=value1 - value0 - (o["q_buy"] - o["q_sell"]) * open1,
                value1=value1,
                mult=_clip(1.0 + rcfg.roi_scale * roi, *rcfg.roi_clip),
                open1=open1,
                close1=close1,
            )
            ag.shares, ag.entry, ag.peak, ag.hold = shares1, entry1, peak1, hold1
            values1.append(value1)
        acc.cash = cash
        acc.equity = cash + sum(values1)
        acc.peak_equity = max(acc.peak_equity, acc.equity)
        drawdown = 1.0 - acc.equity / acc.peak_equity
        acc.max_dd = max(acc.max_dd, drawdown)
        total = sum(values1)
        div = (1.0 - sum(v * v for v in values1) / max(total * total, TINY)) if total > 0 else 0.0

        for j, (ag, o) in enumerate(zip(acc.agents, orders, strict=True)):
            holding = ag.shares > 0
            r = o["pnl"] / alloc
            delta = r - ag.ema_m
            ag.ema_m = ag.ema_m + self.alpha * delta
            ag.ema_v = (1.0 - self.alpha) * (ag.ema_v + self.alpha * delta * delta)
            sd = math.sqrt(ag.ema_v)
            sharpe = (
                _clip(ag.ema_m / (sd + EPS_SHARPE), -rcfg.sharpe_clip, rcfg.sharpe_clip) if holding else 0.0
            )
            trade_dd = 1.0 - o["close1"] / ag.peak if holding else 0.0
            ex = o["executed"]
            if acc.k >= cfg.diversity_window:
                ag.window.popleft()
            ag.window.append(ex)
            ag.seen.add(ex)
            unique = len(set(ag.window))
            bonus = next((b for need_u, b in cfg.diversity_tiers if unique >= need_u), 0.0)
            weight = o["value1"] / alloc
            comps = {
                "pnl": r * o["mult"],
                "cost": -o["cost"] / alloc,
                "timing": (o["q_buy"] - o["q_sell"]) * (o["close1"] - o["open1"]) / alloc,
                "sharpe": sharpe,
                "drawdown": -weight * trade_dd
                - (rcfg.trade_drawdown_penalty if trade_dd > rcfg.trade_drawdown_threshold else 0.0),
                "utilization": min(weight, 1.0) * rcfg.utilization_scale,
                "diversification": div * rcfg.diversification_scale,
                "diversity_bonus": bonus,
                "action_repeat_penalty": -1.0 if o["forced"] else 0.0,
                "intrinsic_action_reward": 1.0 if ex != HOLD else 0.0,
            }
            for ci, name in enumerate(REWARD_COMPONENTS):
                out["components"][ci, i, j] = comps[name]
            out["reward"][i, j] = sum(
                w * comps[name] for w, name in zip(self.weights, REWARD_COMPONENTS, strict=True)
            )
            out["executed"][i, j] = ex
            out["cost"][i, j] = o["cost"]
            ag.run = ag.run + 1 if ex == ag.last else 1
            ag.last = ex

        port_ret = acc.equity / equity0 - 1.0
        bench_ret = self.bench[t1] / self.bench[t] - 1.0
        delta = port_ret - acc.port_m
        acc.port_m = acc.port_m + self.alpha * delta
        acc.port_v = (1.0 - self.alpha) * (acc.port_v + self.alpha * delta * delta)
        sd = math.sqrt(acc.port_v)
        master = [
            _clip(acc.port_m / (sd + EPS_SHARPE), -rcfg.sharpe_clip, rcfg.sharpe_clip),
            div * rcfg.diversification_scale,
            port_ret - bench_ret,
            port_ret - 0.5 * rcfg.risk_aversion * port_ret * port_ret,
        ]
        out["master_components"][:, i] = master
        out["master_reward"][i] = sum(w * x for w, x in zip(self.master_weights, master, strict=True))

        acc.t, acc.k = t1, acc.k + 1
        terminated = acc.equity <= cfg.bankruptcy_fraction * cfg.initial_cash or drawdown >= cfg.max_drawdown
        truncated = not terminated and (acc.k >= cfg.episode_length or t1 >= self.hi - 1)
        out["terminated"][i], out["truncated"][i] = terminated, truncated
        self.done[i] = terminated or truncated

    def state(self) -> dict:
        return {
            "cash": np.array([a.cash for a in self.accounts]),
            "equity": np.array([a.equity for a in self.accounts]),
            "shares": np.array([[ag.shares for ag in a.agents] for a in self.accounts]),
            "entry": np.array([[ag.entry for ag in a.agents] for a in self.accounts]),
            "t": np.array([a.t for a in self.accounts]),
        }
