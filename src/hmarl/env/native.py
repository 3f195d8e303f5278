"""Optional fused CPU step: ``native_step.c``, prebuilt at install or compiled on first use (hmarl/cbuild.py).

The batched torch code in vec_env.py is the simulator (CPU and CUDA). At 64 x 143 on a small CPU its
time goes into per-op dispatch (~450 tensor ops of ~9k elements per step), so on CPU with float64 the
env can run the same step as one C pass over envs and symbols (same state tensors, same rules, same
order of operations; parity-tested against tests/env_reference.py like the torch path).

Built by :mod:`hmarl.cbuild` with ``-O3 -march=native -ffp-contract=off`` (no fused multiply-add, so results
stay IEEE-identical in spirit to the torch path). Where it is neither prebuilt nor buildable, :func:`load`
returns None and ``backend: auto`` falls back to the torch path. :class:`HmStep` mirrors the C struct; the
C side exports its layout and the load checks the two agree.
"""

from __future__ import annotations

import ctypes

import torch

from hmarl import cbuild
from hmarl.env import telemetry
from hmarl.env.params import MASTER_COMPONENTS, REWARD_COMPONENTS
from hmarl.env.rebalance import MODES as REBALANCE_MODES
from hmarl.env.spec import Observation, StepResult

C_SOURCE = "native_step.c"  # this module's kernel (hmarl/cbuild.py KERNELS); named so the DVC deps include it
_P = ctypes.c_void_p
_I = ctypes.c_int64
_D = ctypes.c_double


class HmStep(ctypes.Structure):
    """Mirror of the C ``HmStep`` struct (checked against the C layout at load)."""

    _fields_ = (
        [
            (name, _I)
            for name in (
                "n",
                "s",
                "t_bars",
                "window",
                "episode_length",
                "max_consec",
                "bar_hi",
                "master_interval",
                "step_count",
                "capacity",
                "acc_k",
                "col_policy",
                "col_executed",
                "col_comp",
                "col_sums",
                "col_master",
                "col_financing",
                "row_len",
            )
        ]
        + [
            (name, _D)
            for name in (
                "fee",
                "slip_base",
                "slip_vol",
                "slip_impact",
                "slip_max",
                "add_frac",
                "min_order",
                "winner_thr",
            )
        ]
        + [("buy_frac", _D * 3)]
        + [
            (name, _D)
            for name in (
                "sell_partial",
                "lev_room",
                "fin_per_bar",
                "bankrupt_level",
                "max_dd",
                "alpha",
                "sharpe_clip",
                "roi_scale",
                "roi_lo",
                "roi_hi",
                "dd_thr",
                "dd_pen",
                "util_scale",
                "div_scale",
                "initial_cash",
            )
        ]
        + [
            ("weights", _D * 10),
            ("master_weights", _D * len(MASTER_COMPONENTS)),
            ("tiers", _D * 8),
            ("risk_aversion", _D),
        ]
        + [("default_directive", _I)]
        + [
            (name, _P)
            for name in (
                "table",
                "bench",
                "cash_rate",
                "directives",
                "actions",
                "mask_in",
                "starts",
                "agent",
                "agent_int",
                "ring",
                "packed",
                "account",
                "clock",
                "done",
                "acc",
                "rows",
                "count",
                "reward",
                "components",
                "master_reward",
                "master_components",
                "cost",
                "financing",
                "buy_scale",
                "terminated",
                "truncated",
                "forced",
                "invalid",
                "reset",
                "executed",
                "mask",
                "counts",
                "master_due",
                "agent_obs",
                "portfolio",
                "directive_features",
                "bar",
                "directive",
            )
        ]
        + [("initial_alloc", _I), ("pnl_hold", _I), ("initial_frac", _D), ("entry_cost", _P)]
        + [("rebalance", _I), ("rebalance_band", _D), ("rebalanced", _P)]
        + [("cap_scale", _P), ("cap_ceiling", _D)]
    )


def _bind(lib: ctypes.CDLL) -> None:
    cbuild.check_layout(lib, "hm_step", HmStep)
    lib.hm_step.argtypes = [ctypes.POINTER(HmStep)]
    lib.hm_step.restype = None


def load() -> ctypes.CDLL | None:
    """The compiled library, or None when it is neither prebuilt nor buildable here."""
    return cbuild.load("native_step", _bind)


class NativeStep:
    """Binds a :class:`hmarl.env.vec_env.MarketEnv`'s state tensors to the C step."""

    def __init__(self, env, lib: ctypes.CDLL):
        self.env, self.lib = env, lib
        cfg, m = env.cfg, env.market
        st = self.st = HmStep()
        for name, value in {**_sizes(env), **_scalars(env)}.items():
            setattr(st, name, value)
        st.buy_frac[:] = list(cfg.buy_fractions)
        st.weights[:] = env.weights.tolist()
        st.master_weights[:] = env.master_weights.tolist()
        st.tiers[:] = env.tiers.tolist()
        market = {
            "table": m.table,
            "bench": m.benchmark,
            "cash_rate": m.cash_rate,
            "directives": env.directives,
            "cap_scale": env.cap_scale,
        }
        self._keep = [t.contiguous() for t in market.values()]
        for name, t in zip(market, self._keep, strict=True):
            setattr(st, name, t.data_ptr())
        state = dict(
            agent=env._agent,
            agent_int=env._agent_int,
            ring=env.window.ring,
            packed=env.window.packed,
            account=env._account,
            clock=env._clock,
            done=env.done,
            acc=env.log.acc,
            rows=env.log.rows,
            count=env.log.count,
            entry_cost=env.entry_cost,
        )
        for name, t in state.items():
            if not t.is_contiguous():
                raise RuntimeError(f"native step: state tensor {name} is not contiguous")
            setattr(st, name, t.data_ptr())
        self._ref = ctypes.byref(st)

    def step(self, actions: torch.Tensor):
        env, st = self.env, self.st
        n, s, c = env.num_envs, env.num_symbols, len(REWARD_COMPONENTS)
        a = actions.to(torch.int64).contiguous()
        starts = torch.randint(env.bar_lo, env.start_hi + 1, (n,), generator=env.generator)
        f64, b, f32 = torch.float64, torch.bool, torch.float32
        out = {
            "reward": torch.empty(n, s, dtype=f64),
            "components": torch.empty(c, n, s, dtype=f64),
            "master_reward": torch.empty(n, dtype=f64),
            "master_components": torch.empty(len(MASTER_COMPONENTS), n, dtype=f64),
            "cost": torch.empty(n, s, dtype=f64),
            "financing": torch.empty(n, dtype=f64),
            "buy_scale": torch.empty(n, dtype=f64),
            "terminated": torch.empty(n, dtype=b),
            "truncated": torch.empty(n, dtype=b),
            "forced": torch.empty(n, s, dtype=b),
            "invalid": torch.empty(n, s, dtype=b),
            "reset": torch.empty(n, dtype=b),
            "rebalanced": torch.empty(n, s, dtype=f64),
            "executed": torch.empty(n, s, dtype=torch.int64),
            "mask": torch.empty(n, s, 7, dtype=b),
            "counts": torch.empty(n, s, 7, dtype=torch.uint8),
            "master_due": torch.empty(n, dtype=b),
            "agent_obs": torch.empty(n, s, 7, dtype=f32),
            "portfolio": torch.empty(n, 7, dtype=f32),
            "directive_features": torch.empty(n, 3, dtype=f32),
            "bar": torch.empty(n, dtype=torch.int64),
            "directive": torch.empty(n, dtype=torch.int64),
        }
        for name, t in out.items():
            setattr(st, name, t.data_ptr())
        mask_in = (
            env._obs.mask.contiguous()
        )  # the masks the policy saw (set_directive may have refreshed them)
        st.actions, st.starts, st.mask_in = a.data_ptr(), starts.data_ptr(), mask_in.data_ptr()
        st.step_count = env.window.step_count
        env.window.step_count += 1
        self._alive = (a, starts, mask_in, out)  # the struct points into these until the next call
        self.lib.hm_step(self._ref)
        obs = Observation(
            out["bar"],
            out["agent_obs"],
            out["portfolio"],
            env.market.regime.index_select(0, out["bar"]),
            out["directive"],
            out["directive_features"],
            out["counts"],
            out["mask"],
            out["master_due"],
        )
        env._obs = obs
        info = {
            "forced_hold": out["forced"],
            "invalid_action": out["invalid"],
            "cost": out["cost"],
            "financing": out["financing"],
            "buy_scale": out["buy_scale"],
            "reset": out["reset"],
            "rebalanced": out["rebalanced"],
        }
        return StepResult(
            obs,
            out["reward"],
            out["components"],
            out["master_reward"],
            out["master_components"],
            out["terminated"],
            out["truncated"],
            actions,
            out["executed"],
            info,
        )


def _sizes(env) -> dict[str, int]:
    """The struct's sizes and telemetry columns."""
    cfg, m = env.cfg, env.market
    return dict(
        n=env.num_envs,
        s=env.num_symbols,
        t_bars=m.num_bars,
        window=env.window.window,
        episode_length=cfg.episode_length,
        max_consec=cfg.max_consecutive_actions,
        bar_hi=env.bar_hi,
        master_interval=cfg.master.interval,
        capacity=env.log.capacity,
        acc_k=len(telemetry.ACC_COLUMNS),
        col_policy=telemetry._POLICY.start,
        col_executed=telemetry._EXECUTED.start,
        col_comp=telemetry._PER_AGENT.start,
        col_sums=telemetry._PER_AGENT.start + len(REWARD_COMPONENTS),
        col_master=len(telemetry.ACC_COLUMNS) - 2,
        col_financing=len(telemetry.ACC_COLUMNS) - 1,
        row_len=len(telemetry.COLUMNS),
        default_directive=env.default_directive,
        initial_alloc=int(cfg.initial_position == "allocation"),
        pnl_hold=int(env.rcfg.pnl_baseline == "hold"),
        rebalance=REBALANCE_MODES.index(cfg.master.rebalance),
    )


def _scalars(env) -> dict[str, float]:
    """The struct's parameters."""
    cfg, rcfg = env.cfg, env.rcfg
    fp = env.fill_params
    return dict(
        fee=fp.fee,
        slip_base=fp.slip_base,
        slip_vol=fp.slip_vol,
        slip_impact=fp.slip_impact,
        slip_max=fp.slip_max,
        add_frac=fp.add_fraction,
        min_order=fp.min_order_fraction,
        winner_thr=cfg.winner_threshold,
        sell_partial=cfg.sell_partial_fraction,
        lev_room=env.lev_room,
        fin_per_bar=env.financing_per_bar,
        bankrupt_level=cfg.bankruptcy_fraction * cfg.initial_cash,
        max_dd=cfg.max_drawdown,
        alpha=env.alpha,
        sharpe_clip=rcfg.sharpe_clip,
        roi_scale=rcfg.roi_scale,
        roi_lo=rcfg.roi_clip[0],
        roi_hi=rcfg.roi_clip[1],
        dd_thr=rcfg.trade_drawdown_threshold,
        dd_pen=rcfg.trade_drawdown_penalty,
        util_scale=rcfg.utilization_scale,
        div_scale=rcfg.diversification_scale,
        risk_aversion=rcfg.risk_aversion,
        initial_cash=cfg.initial_cash,
        initial_frac=cfg.initial_fraction,
        rebalance_band=cfg.master.rebalance_band,
        cap_ceiling=env.cap_ceiling,
    )


def bind(env) -> NativeStep:
    lib = load()
    if lib is None:
        raise RuntimeError("native step library is not available")
    return NativeStep(env, lib)
