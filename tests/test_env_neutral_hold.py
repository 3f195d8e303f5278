"""Holding as the neutral state (issue 19): episodes that start invested at the allocation
(``env.initial_position``), caps in units of the equal-weight slot (``env.master.cap_unit``) and the
pnl reward relative to holding (``reward.pnl_baseline``); all opt-in, off by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from env_fixtures import backends, env_config, make_store, reward_config
from hmarl.config import build_config
from hmarl.env.actions import Action, directive_table
from hmarl.env.market import ADV, CLOSE, SIGMA, TRADABLE, MarketData
from hmarl.env.params import REWARD_COMPONENTS, EnvConfig, MasterGridConfig
from hmarl.env.vec_env import MarketEnv
from hmarl.evaluation.backtest import backtest, buy_and_hold
from hmarl.evaluation.exposure import exposure_funnel

REPO = Path(__file__).resolve().parents[1]
PNL = REWARD_COMPONENTS.index("pnl")
NO_COSTS = {
    "commission_bps_round_trip": 0.0,
    "slippage_bps": 0.0,
    "slippage_vol_coef": 0.0,
    "slippage_impact_coef": 0.0,
}
# risk 1.0 (index 2), cap index 3, aggressive mode (no open-position limit)
AGGRESSIVE = MasterGridConfig(position_caps=[0.05, 0.1, 0.15, 0.1], default=[2, 3, 2])


def _env(store, num_envs=3, bar_range=None, rcfg=None, seed=0, **overrides) -> MarketEnv:
    cfg = env_config(
        **{"num_envs": num_envs, "initial_position": "allocation", "master": AGGRESSIVE, **overrides}
    )
    return MarketEnv(
        MarketData.from_store(store, cfg), cfg, rcfg or reward_config(), bar_range=bar_range, seed=seed
    )


def _hold(env) -> torch.Tensor:
    return torch.zeros(env.num_envs, env.num_symbols, dtype=torch.int64)


def test_reset_holds_each_tradable_symbol_at_its_allocation_with_costs_charged():
    store = make_store(num_bars=120, num_symbols=6, seed=4, untradable_fraction=0.25)
    env = _env(store, num_envs=4, initial_fraction=0.5)
    env.reset(seed=1)
    cfg, fp, table = env.cfg, env.fill_params, env.market.table
    row = table.index_select(1, env.t)  # (5, N, S) the start bars
    tradable = row[TRADABLE]
    assert 0 < tradable.sum() < tradable.numel()  # the market leaves some symbols out at some starts
    alloc = cfg.initial_cash * 1.0 * 0.1
    notional = 0.5 * alloc * tradable
    slip = (fp.slip_base + fp.slip_vol * row[SIGMA] + fp.slip_impact * notional / row[ADV]).clamp(
        max=fp.slip_max
    )
    cost = notional * ((1 + slip) * (1 + fp.fee) - 1)
    close = row[CLOSE]
    torch.testing.assert_close(env.shares * close, notional)  # bought at the start bar's close
    torch.testing.assert_close(env.entry, close * (1 + slip) * tradable)
    torch.testing.assert_close(env.entry_cost, cost)
    assert (cost[tradable > 0] > 0).all()
    torch.testing.assert_close(env.cash, cfg.initial_cash - (notional + cost).sum(1))
    torch.testing.assert_close(env.equity, env.cash + (env.shares * close).sum(1))
    torch.testing.assert_close(env.equity, cfg.initial_cash - cost.sum(1))
    torch.testing.assert_close(env.peak_eq, env.equity)
    torch.testing.assert_close(env.hold, tradable)
    assert (env.last == 0).all() and (env.run == 0).all()  # not an action of the agents


def test_reset_never_spends_more_than_the_cash_and_respects_the_open_limit():
    store = make_store(num_bars=120, num_symbols=6, seed=5)
    rich = MasterGridConfig(position_caps=[0.1, 0.2, 0.3, 0.4], default=[2, 3, 2])  # 6 x 0.4 of equity
    env = _env(store, num_envs=2, master=rich)
    env.reset(seed=0)
    close = env.market.table[CLOSE].index_select(0, env.t)
    value = env.shares * close
    assert env.cash.abs().max() < 1e-6  # every buy scaled by one factor: the cash is spent exactly
    torch.testing.assert_close(value, value[:, :1].expand_as(value))  # equal allocations stay equal
    torch.testing.assert_close(value.sum(1) + env.entry_cost.sum(1), torch.full_like(env.cash, 1e6))
    # neutral mode: half the universe may be held; the first symbols in symbol order are bought
    neutral = MasterGridConfig(position_caps=[0.05, 0.1, 0.15, 0.1], default=[2, 3, 1])
    env = _env(store, num_envs=2, master=neutral)
    env.reset(seed=0)
    assert (env.shares > 0).tolist() == [[True] * 3 + [False] * 3] * 2


def test_all_hold_tracks_buy_and_hold_of_the_allowed_room_and_autoresets_invest_again():
    store = make_store(num_bars=90, num_symbols=5, seed=6)
    env = _env(store, num_envs=2, episode_length=20)
    env.reset(seed=3)
    shares, cash = env.shares.clone(), env.cash.clone()
    for _ in range(19):
        res = env.step(_hold(env))
        assert not res.info["reset"].any()
        close = env.market.table[CLOSE].index_select(0, env.t)
        torch.testing.assert_close(env.shares, shares)
        torch.testing.assert_close(env.equity, cash + (shares * close).sum(1))  # cash earns 0 here
    res = env.step(_hold(env))  # the episode ends (truncated) ...
    assert res.truncated.all()
    res = env.step(_hold(env))  # ... and the next step starts a new one, invested at its start bar
    assert res.info["reset"].all() and (env.k == 0).all()
    close = env.market.table[CLOSE].index_select(0, env.t)
    torch.testing.assert_close(env.shares * close, torch.full_like(close, 0.1e6))
    torch.testing.assert_close(env.hold, torch.ones_like(close))


def test_same_seed_same_numbers_with_the_options_on():
    store = make_store(num_bars=90, num_symbols=5, seed=7, untradable_fraction=0.1)
    runs = []
    for _ in range(2):
        env = _env(store, num_envs=3, episode_length=8, rcfg=reward_config(pnl_baseline="hold"), seed=11)
        env.reset(seed=11)
        g = torch.Generator().manual_seed(0)
        rewards = []
        for _ in range(30):
            a = torch.randint(0, 7, (3, 5), generator=g)
            rewards.append(env.step(a).reward.clone())
        runs.append((torch.stack(rewards), env.state()))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    for key, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][key], rtol=0, atol=0)


def test_equal_weight_caps_scale_allocations_by_one_over_s():
    s = 8
    for caps in ([0.005, 0.01, 0.015, 0.02], [0.5, 0.75, 1.0, 1.0]):
        m = {"position_caps": caps}
        equity = directive_table(
            EnvConfig(master=MasterGridConfig(**m)), s, torch.float64, torch.device("cpu")
        )
        weighted = directive_table(
            EnvConfig(master=MasterGridConfig(**m, cap_unit="equal_weight")),
            s,
            torch.float64,
            torch.device("cpu"),
        )
        torch.testing.assert_close(weighted[:, 1], equity[:, 1] / s)
        torch.testing.assert_close(weighted[:, [0, 2]], equity[:, [0, 2]])


@pytest.mark.parametrize("backend", backends())
def test_equal_weight_caps_size_the_orders_on_every_backend(backend):
    """The simulator's allocation reads the table: a BUY_LARGE buys 0.75 x equity x cap x risk / S, the
    same on the torch and the fused C step (which reads the same directive table)."""
    s = 4
    store = make_store(num_bars=40, num_symbols=s, seed=8)
    master = MasterGridConfig(cap_unit="equal_weight", position_caps=[1.0, 1.0, 1.0, 1.0], default=[2, 0, 2])
    cfg = env_config(num_envs=1, master=master, backend=backend, episode_length=30, **NO_COSTS)
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), bar_range=(5, 40))
    assert env.backend == backend
    env.reset(seed=0)
    t1 = int(env.t[0]) + 1
    env.step(torch.full((1, s), int(Action.BUY_LARGE), dtype=torch.int64))
    open1 = env.market.table[0, t1]
    torch.testing.assert_close(env.shares[0] * open1, torch.full((s,), 0.75 * 1e6 / s, dtype=torch.float64))


def test_pnl_baseline_hold_scores_holding_the_allocation_zero_and_a_flat_symbol_minus_its_return():
    """Two symbols, an open limit of one: symbol 0 is held at exactly its allocation (no costs), symbol 1
    is flat. Under ``pnl_baseline: hold`` their pnl components are 0 and minus symbol 1's close-to-close
    return; every other component is the same as without the baseline."""
    store = make_store(num_bars=60, num_symbols=2, seed=9)
    one_slot = MasterGridConfig(position_caps=[0.5] * 4, max_open_fraction=[0.5] * 3, default=[2, 3, 2])
    out = {}
    for baseline in ("none", "hold"):
        rcfg = reward_config(pnl_baseline=baseline, roi_scale=0.0)  # ROI multiplier 1
        env = _env(store, num_envs=1, rcfg=rcfg, master=one_slot, **NO_COSTS)
        env.reset(seed=2)
        t0 = int(env.t[0])
        assert env.shares[0, 0] > 0 and env.shares[0, 1] == 0
        close0 = env.market.table[CLOSE, t0]
        alloc = float(env.equity[0]) * 0.5
        assert float(env.shares[0, 0] * close0[0]) == pytest.approx(alloc)
        res = env.step(_hold(env))
        out[baseline] = res
    ret = env.market.table[CLOSE, t0 + 1] / close0 - 1.0
    hold = out["hold"].components[:, 0]
    assert abs(ret[0]) > 1e-3 and abs(ret[1]) > 1e-3  # the market moved
    assert hold[PNL, 0].item() == pytest.approx(0.0, abs=1e-12)
    assert hold[PNL, 1].item() == pytest.approx(-ret[1].item(), rel=1e-12)
    # without it: the held position's return, 0 for the flat symbol
    torch.testing.assert_close(
        out["none"].components[PNL, 0], ret * torch.tensor([1.0, 0.0], dtype=ret.dtype)
    )
    other = [i for i in range(len(REWARD_COMPONENTS)) if i != PNL]
    torch.testing.assert_close(hold[other], out["none"].components[other, 0])
    w = reward_config().weight_vector()[PNL]
    torch.testing.assert_close(out["hold"].reward - out["none"].reward, -w * ret.view(1, -1))


@pytest.mark.skipif(backends() == ["torch"], reason="no C compiler and no prebuilt kernel: torch only")
def test_native_step_matches_torch_with_the_options_on():
    """The fused C step implements the three options (autoresets buy the initial positions in C, the pnl
    baseline, the table's equal-weight caps): with random actions and short episodes (many autoresets)
    both backends give the same rewards, components, costs, observations and state; auto takes native."""
    store = make_store(num_bars=80, num_symbols=5, seed=10, untradable_fraction=0.1)
    master = MasterGridConfig(cap_unit="equal_weight", position_caps=[0.5, 0.75, 1.0, 1.0], default=[3, 3, 1])
    rcfg = reward_config(pnl_baseline="hold", weights="pnl_scaled")
    runs = {}
    for backend in ("torch", "native", "auto"):
        env = _env(store, num_envs=4, rcfg=rcfg, master=master, episode_length=6, backend=backend, seed=4)
        assert env.backend == ("native" if backend == "auto" else backend)
        env.reset(seed=4)
        g = torch.Generator().manual_seed(1)
        out, resets = [], 0
        for _ in range(40):
            a = torch.randint(0, 7, (4, 5), generator=g)
            r = env.step(a)
            resets += int(r.info["reset"].sum())
            out.append(
                torch.cat(
                    [
                        r.reward.flatten(),
                        r.components.flatten(),
                        (r.info["cost"] * ~r.info["reset"].unsqueeze(1)).flatten(),  # means nothing there
                        r.obs.agent.double().flatten(),
                        r.obs.portfolio.double().flatten(),
                        env.entry_cost.flatten(),
                    ]
                )
            )
            out.append(torch.cat([r.obs.mask.double().flatten(), r.executed_action.double().flatten()]))
        state = env.state()
        runs[backend] = (torch.cat(out), state, resets)
    assert runs["torch"][2] >= 8  # the autoresets (initial purchases in C) were exercised
    for backend in ("native", "auto"):
        torch.testing.assert_close(runs[backend][0], runs["torch"][0], rtol=1e-9, atol=1e-9)
        for key, value in runs["torch"][1].items():
            torch.testing.assert_close(runs[backend][1][key], value, rtol=1e-9, atol=1e-9)


def test_evaluation_backtest_starts_fully_invested_and_tracks_buy_and_hold():
    """The shipped params with the three options, caps of one equal-weight slot at risk 1, no open limit:
    the all-HOLD backtest is ~fully invested from its first bar (exposure funnel) and its equity follows
    the equal-weight buy-and-hold baseline (which buys at the next open instead of this close)."""
    symbols, bars = 6, (20, 120)
    overrides = [
        "tracking.enabled=false",
        "env.initial_position=allocation",
        "env.master.cap_unit=equal_weight",
        "env.master.position_caps=[1.0,1.0,1.0,1.0]",
        "env.master.default=[3,3,2]",  # risk 1.0, cap 1.0 slot, aggressive
        "reward.pnl_baseline=hold",
    ]
    cfg = build_config(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    market = MarketData.from_store(make_store(num_bars=120, num_symbols=symbols, seed=3), cfg.env)
    bt = backtest(market, cfg, bars, lambda obs: torch.zeros(obs.mask.shape[:2], dtype=torch.int64), 2, 0)
    f = exposure_funnel(bt, market, cfg, bars)
    assert f["exposure"] > 0.95 and f["ceiling"] == pytest.approx(1.0)
    assert f["held_symbols"] == symbols and f["slot_use"] == pytest.approx(1.0)
    assert f["pick_hold"] == 1 and f["holding_bars"] == pytest.approx(bars[1] - bars[0] - 1)
    # row 0 is the account before the purchase; step 0 carries its costs and notional
    assert (bt.equity[0] == pytest.approx(cfg.env.initial_cash)) and (bt.costs[0] > 0).all()
    assert bt.traded[0] == pytest.approx(bt.gross[0], rel=0.02)
    pnl = bt.symbol_pnl.sum(-1)  # the symbols' net P&L adds up to the equity change (cash earns 0)
    np.testing.assert_allclose(pnl, np.diff(bt.equity, axis=0), rtol=1e-9, atol=1e-6)
    bh = buy_and_hold(market, cfg, bars)
    gap = np.abs(bt.equity[:, 0] / bh.equity - 1.0)
    assert gap.max() < 0.01
    # the same backtest without the option stays in cash: the option is what invests it
    plain = cfg.model_copy(update={"env": cfg.env.model_copy(update={"initial_position": "cash"})})
    bt0 = backtest(market, plain, bars, lambda obs: torch.zeros(obs.mask.shape[:2], dtype=torch.int64), 1, 0)
    assert bt0.gross.max() == 0


def test_live_desk_starts_from_its_own_account_not_a_simulated_purchase():
    """The decider resets its one-bar env for every decision: with ``initial_position: allocation`` its
    account must still be the desk's (default: flat initial cash), not the simulated initial purchase."""
    from hmarl.serve.decision import start_bar

    store = make_store(num_bars=30, num_symbols=4, seed=12)
    env = _env(store, num_envs=1, bar_range=(20, 22))
    obs = start_bar(env, None, None)
    assert (env.shares == 0).all() and (env.hold == 0).all() and (env.entry_cost == 0).all()
    assert float(env.equity[0]) == float(env.cash[0]) == env.cfg.initial_cash
    assert float(obs.portfolio[0, 0]) == pytest.approx(1.0)  # all cash
    env.reset(seed=0)  # a simulated episode of the same env does start invested
    assert (env.shares > 0).all()
