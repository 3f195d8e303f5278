"""One test per trading rule of the simulator, on small hand-made markets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import env_fixtures
from env_fixtures import backends, env_config, make_store, reward_config, store_from_arrays
from hmarl.env.actions import Action
from hmarl.env.market import MarketData
from hmarl.env.params import REWARD_COMPONENTS, MasterGridConfig
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import DataError

H, BS, BM, BL, SP, SA, ADD = (int(a) for a in Action)
C = {name: i for i, name in enumerate(REWARD_COMPONENTS)}
AGGRESSIVE = MasterGridConfig(default=[2, 1, 2])  # risk 1.0, cap 0.02, no open-position limit


@pytest.fixture(autouse=True, params=backends())
def backend(request, monkeypatch):
    """Every rule is checked on each simulator backend (torch ops, and the fused C step where it builds)."""
    monkeypatch.setitem(env_fixtures.DEFAULT_BACKEND, "name", request.param)
    return request.param


def market_from_prices(close, open_=None, volume=1e12, tradable=None):
    """OHLCV from explicit (T, S) closes/opens; huge volume so the impact term vanishes."""
    close = np.asarray(close, dtype=np.float64)
    open_ = close.copy() if open_ is None else np.asarray(open_, dtype=np.float64)
    ohlcv = np.stack(
        [open_, np.maximum(open_, close), np.minimum(open_, close), close, np.full_like(close, volume)],
        axis=2,
    )
    tradable = np.ones(close.shape, bool) if tradable is None else tradable
    return store_from_arrays(ohlcv, tradable)


def make_env(store, num_envs=1, start=0, **overrides):
    """An env whose episodes start exactly at ``start`` (the range leaves room for one episode only)."""
    base = {
        "num_envs": num_envs,
        "episode_length": store.num_bars - start - 1,
        "slippage_bps": 0.0,
        "slippage_vol_coef": 0.0,
        "slippage_impact_coef": 0.0,
        "master": AGGRESSIVE,
    }
    base.update(overrides)
    cfg = env_config(**base)
    rcfg = reward_config()
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, rcfg, bar_range=(start, store.num_bars))
    return env, env.reset(seed=0)


def act(env, *actions):
    return env.step(torch.tensor([list(actions)] * env.num_envs, dtype=torch.int64))


def test_fill_at_next_open_with_commission():
    close = np.array([[100.0], [110.0], [120.0], [125.0]])
    opens = np.array([[100.0], [105.0], [118.0], [125.0]])
    env, obs = make_env(market_from_prices(close, opens))
    assert int(obs.bar[0]) == 0
    alloc = 1e6 * 1.0 * 0.02  # default directive: risk 1.0, cap 0.02
    res = act(env, BL)
    notional = 0.75 * alloc
    fee = 15.0 / 2 / 1e4
    assert env.shares[0, 0].item() == pytest.approx(notional / 105.0)  # filled at open[1], not close[0]
    assert env.entry[0, 0].item() == pytest.approx(105.0)
    assert env.cash[0].item() == pytest.approx(1e6 - notional * (1 + fee))
    assert env.equity[0].item() == pytest.approx(1e6 - notional * (1 + fee) + notional / 105.0 * 110.0)
    assert res.info["cost"][0, 0].item() == pytest.approx(notional * fee)
    # the cost-free pnl of the step is the move from the fill price to the close
    assert res.components[C["pnl"], 0, 0].item() == pytest.approx(notional / 105.0 * 5.0 / alloc)
    assert res.components[C["timing"], 0, 0].item() == pytest.approx(notional / 105.0 * 5.0 / alloc)


def test_costs_on_both_legs_make_a_round_trip_cost_15_bps():
    close = np.full((5, 1), 100.0)
    env, _ = make_env(market_from_prices(close))
    act(env, BL)
    bought = env.shares[0, 0].item() * 100.0
    res = act(env, SA)
    assert env.shares[0, 0].item() == 0.0
    assert res.info["cost"][0, 0].item() == pytest.approx(bought * 7.5e-4)
    assert env.equity[0].item() == pytest.approx(1e6 - 2 * bought * 7.5e-4)
    assert (1e6 - env.equity[0].item()) / bought == pytest.approx(15e-4)


def test_slippage_grows_with_volatility_and_size():
    store = make_store(num_bars=60, num_symbols=2, seed=1)
    cfg = env_config(num_envs=1, episode_length=20, master=AGGRESSIVE)
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), bar_range=(30, 60))
    env.reset(seed=0)
    sigma, adv = env._ctx["sigma"][0], env._ctx["adv"][0]
    res = env.step(torch.tensor([[BL, BS]]))
    for j, frac in enumerate((0.75, 0.25)):
        notional = frac * env._ctx["alloc"].new_tensor(1e6 * 0.02).item()
        slip = 1e-4 + 0.1 * sigma[j].item() + 0.1 * notional / adv[j].item()
        assert res.info["cost"][0, j].item() == pytest.approx(notional * ((1 + slip) * (1 + 7.5e-4) - 1))


def test_masks_flat_holding_winner_and_untradable():
    close = np.array(
        [[100.0, 100.0, 100.0], [100.0, 100.0, 100.0], [110.0, 90.0, 100.0], [110.0, 90.0, 100.0]]
    )
    tradable = np.ones_like(close, bool)
    tradable[2, 2] = False
    env, obs = make_env(market_from_prices(close, tradable=tradable))
    flat = obs.mask[0, 0].tolist()
    assert flat == [True, True, True, True, False, False, False]  # no SELL/ADD when flat
    res = act(env, BS, BS, H)
    m = res.obs.mask[0]
    assert m[0].tolist() == [True, False, False, False, True, True, False]  # holding, not winning yet
    res = act(env, H, H, H)
    m = res.obs.mask[0]
    assert m[0].tolist() == [True, False, False, False, True, True, True]  # winner below cap: ADD allowed
    assert m[1].tolist() == [True, False, False, False, True, True, False]  # loser: no ADD
    assert m[2].tolist() == [True] + [False] * 6  # untradable bar: HOLD only


def test_masks_position_limit_and_cash():
    close = np.full((4, 4), 100.0)
    master = MasterGridConfig(max_open_fraction=[0.25, 0.5, 1.0], default=[2, 1, 0])  # defensive: 1 position
    env, obs = make_env(market_from_prices(close), master=master)
    res = act(env, BS, BS, H, H)  # both allowed at t, the limit keeps the first in symbol order
    assert res.executed_action[0].tolist() == [BS, H, H, H]
    assert not res.obs.mask[0, 1:, BS : BL + 1].any()  # limit reached: no BUY anywhere
    # a big allocation against little cash: only the sizes the cash covers stay allowed
    master = MasterGridConfig(position_caps=[0.5, 1.0, 2.0, 3.0], default=[3, 3, 2])
    env, obs = make_env(market_from_prices(close), master=master)  # alloc = 1.25 * 3 * 1e6
    assert obs.mask[0, 0, BS].item() and not obs.mask[0, 0, BM].item() and not obs.mask[0, 0, BL].item()


def test_cash_short_buys_are_scaled_pro_rata():
    close = np.full((4, 3), 100.0)
    master = MasterGridConfig(position_caps=[0.1, 0.2, 0.3, 1.0], default=[2, 3, 2])  # alloc = equity
    env, obs = make_env(market_from_prices(close), master=master)
    assert obs.mask[0, :, BS].all()
    res = act(env, BS, BS, BM)  # wants 0.25 + 0.25 + 0.5 of equity + commission > cash
    scale = res.info["buy_scale"][0].item()
    assert 0.99 < scale < 1.0
    assert env.cash[0].item() == pytest.approx(0.0, abs=1e-6)
    values = (env.shares[0] * 100.0).tolist()
    assert values[0] == pytest.approx(values[1]) and values[2] == pytest.approx(2 * values[0])


def test_forced_hold_after_three_identical_actions():
    close = np.full((12, 1), 100.0)
    env, _ = make_env(market_from_prices(close), min_order_fraction=0.0)
    act(env, BL)
    executed, forced, penalty = [], [], []
    for _ in range(5):
        res = act(env, SP)
        executed.append(int(res.executed_action[0, 0]))
        forced.append(bool(res.info["forced_hold"][0, 0]))
        penalty.append(res.components[C["action_repeat_penalty"], 0, 0].item())
    assert executed == [SP, SP, SP, H, SP]  # the 4th identical pick becomes HOLD; the run restarts
    assert forced == [False, False, False, True, False]
    assert penalty == [0.0, 0.0, 0.0, -1.0, 0.0]


def test_invalid_actions_execute_as_hold():
    close = np.full((4, 2), 100.0)
    env, _ = make_env(market_from_prices(close))
    res = act(env, SA, ADD)  # nothing held
    assert res.executed_action[0].tolist() == [H, H]
    assert res.info["invalid_action"][0].all()
    assert env.get_episode_stats()["episodes"] == 0.0


def test_roi_multiplier_is_clipped():
    close = np.array([[100.0, 100.0], [100.0, 100.0], [300.0, 60.0], [330.0, 54.0], [330.0, 54.0]])
    env, _ = make_env(market_from_prices(close))
    act(env, BS, BS)  # filled at 100
    act(env, H, H)  # close 300 (ROI +200%) and 60 (ROI -40%)
    shares = env.shares[0].clone()
    alloc = env.equity[0].item() * 0.02
    res = act(env, H, H)  # the step from close 300/60 to 330/54
    pnl = res.components[C["pnl"], 0]
    # multiplier = clip(1 + 2.0 x ROI, 0.5, 3): 1 + 4 -> 3 and 1 - 0.8 -> 0.5
    assert pnl[0].item() == pytest.approx(shares[0].item() * 30.0 / alloc * 3.0)
    assert pnl[1].item() == pytest.approx(shares[1].item() * -6.0 / alloc * 0.5)
    res = act(env, H, H)  # price unchanged: no pnl whatever the multiplier
    assert res.components[C["pnl"], 0].tolist() == [0.0, 0.0]


def test_diversity_bonus_follows_unique_executed_actions_in_window():
    close = np.tile(np.linspace(100, 130, 40)[:, None], (1, 1))
    env, _ = make_env(market_from_prices(close), diversity_window=6, min_order_fraction=0.0)
    plan = [BS, H, ADD, SP, SA, H, H, H, H, H, H, H]
    bonuses = [act(env, a).components[C["diversity_bonus"], 0, 0].item() for a in plan]
    # unique executed in the last 6 steps: 1,2,3,4,5,5,4,3,3(H,SA... ) -> tiers 0/0/0.1/0.2/0.3/...
    assert bonuses[:5] == [0.0, 0.0, 0.1, 0.2, 0.3]
    assert bonuses[-1] == 0.0  # a window of HOLDs only


def test_termination_on_max_drawdown_and_autoreset():
    close = np.array([[100.0]] * 2 + [[30.0]] * 7)
    master = MasterGridConfig(position_caps=[0.1, 0.2, 0.5, 1.0], default=[2, 3, 1])
    env, _ = make_env(market_from_prices(close), master=master, max_drawdown=0.3)
    act(env, BL)  # 75% of equity in the symbol
    res = act(env, H)  # the close falls 70%
    assert res.terminated.tolist() == [True] and not res.truncated.any()
    stats = env.get_episode_stats()
    assert stats["episodes"] == 1.0 and stats["ep_terminated_fraction"] == 1.0
    assert stats["ep_max_drawdown_mean"] > 0.3
    res = act(env, SA)  # ignored: the env restarts
    assert res.info["reset"].tolist() == [True] and res.reward.abs().sum() == 0
    assert env.equity[0].item() == 1e6 and env.shares.sum() == 0


def test_no_look_ahead():
    base = make_store(num_bars=80, num_symbols=3, seed=7)
    changed = make_store(num_bars=80, num_symbols=3, seed=7)
    cut = 50
    rng = np.random.default_rng(0)
    changed.ohlcv[cut + 1 :] *= rng.uniform(0.5, 1.5, size=changed.ohlcv[cut + 1 :].shape)
    changed.tradable[cut + 1 :] = rng.random(changed.tradable[cut + 1 :].shape) > 0.3
    changed.regime[cut + 1 :] += 5.0
    changed.benchmark[cut + 1 :] *= 1.7
    runs = []
    for store in (base, changed):
        env, obs = make_env(store, start=20)
        rng_a = np.random.default_rng(1)
        record = [obs]
        for _ in range(cut - 20):
            valid = np.argmax(np.where(obs.mask[0].numpy(), rng_a.random((3, 7)), -1), axis=1)
            res = env.step(torch.tensor(valid[None]))
            obs = res.obs
            record.append(res)
        runs.append(record)
    assert int(runs[0][-1].obs.bar[0]) == cut
    for a, b in zip(runs[0][1:], runs[1][1:], strict=True):
        for x, y in zip(a.obs, b.obs, strict=True):
            assert torch.equal(x, y)
        assert torch.equal(a.reward, b.reward) and torch.equal(a.components, b.components)
        assert torch.equal(a.executed_action, b.executed_action)


def test_bad_actions_are_refused_unless_checks_are_off():
    close = np.full((4, 2), 100.0)
    env, _ = make_env(market_from_prices(close))
    with pytest.raises(ValueError, match=r"ids must be in 0..6"):
        env.step(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"ids must be in 0..6"):
        env.step(torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="expected shape"):
        env.step(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        env.step(torch.tensor([[0.0, 1.0]]))
    fast, _ = make_env(market_from_prices(close), check_actions=False)
    fast.step(torch.tensor([[1, 0]], dtype=torch.uint8))  # the trusted path takes uint8 ids too


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [(3, np.nan, "finite"), (0, -1.0, "> 0"), (3, np.inf, "finite"), (4, np.nan, "volume")],
)
def test_bad_prices_are_refused_naming_symbol_and_bar(column, value, why):
    store = make_store(num_bars=30, num_symbols=3, seed=0)
    store.ohlcv[17, 2, column] = value
    with pytest.raises(DataError) as exc:
        MarketData.from_store(store, env_config())
    msg = str(exc.value)
    day = str(np.datetime64(int(store.timestamps[17]), "ns"))[:10]
    assert "'S002'" in msg and "bar 17" in msg and why in msg and day in msg


def test_untradable_bars_may_hold_nan_and_orders_there_are_cancelled():
    store = make_store(num_bars=30, num_symbols=2, seed=0)
    store.ohlcv[5, 1, :4] = np.nan
    store.tradable[5, 1] = False
    market = MarketData.from_store(store, env_config())
    assert torch.isfinite(market.table).all()
    env, obs = make_env(store, start=4)
    res = act(env, BS, BS)  # symbol 1 is not tradable at the fill bar 5
    assert res.executed_action[0].tolist() == [BS, H]


def test_master_directive_applies_only_when_due():
    close = np.full((12, 2), 100.0)
    env, obs = make_env(market_from_prices(close))
    assert obs.master_due.tolist() == [True]
    obs = env.set_directive(torch.tensor([47]))  # risk 1.25, cap 0.05, aggressive
    assert obs.directive.tolist() == [47]
    assert obs.directive_features[0].tolist() == pytest.approx([1.25, 0.05, 1.0])
    res = act(env, H, H)
    assert not res.obs.master_due.item()
    obs = env.set_directive(torch.tensor([0]))  # not due: ignored
    assert obs.directive.tolist() == [47]


def test_float32_mode_tracks_float64(backend):
    store = make_store(num_bars=200, num_symbols=5, seed=9)
    equities = []
    for dtype in ("float64", "float32"):
        cfg = env_config(
            num_envs=3, episode_length=150, dtype=dtype, backend="torch" if dtype == "float32" else backend
        )
        env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=4)
        obs = env.reset()
        rng = np.random.default_rng(0)
        for _ in range(100):
            valid = np.argmax(np.where(obs.mask.numpy(), rng.random((3, 5, 7)), -1), axis=2)
            obs = env.step(torch.tensor(valid)).obs
        equities.append(env.equity.double().numpy())
    np.testing.assert_allclose(equities[1], equities[0], rtol=1e-4)


def test_native_backend_needs_float64_on_cpu(backend):
    store = make_store(num_bars=40, num_symbols=2)
    cfg = env_config(dtype="float32", backend="native")
    with pytest.raises(RuntimeError, match="backend=native needs a CPU device and dtype float64"):
        MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config())
    auto = env_config(dtype="float32", backend="auto")
    assert MarketEnv(MarketData.from_store(store, auto), auto, reward_config()).backend == "torch"


def _random_run(backend_cfg, store, steps=150, seed=0, bar_range=(100, 180)):
    cfg = env_config(num_envs=3, episode_length=40, **backend_cfg)
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), bar_range=bar_range, seed=seed)
    obs = env.reset()
    rng = np.random.default_rng(seed)
    bars, rewards = [obs.bar.clone()], []
    for _ in range(steps):
        res = env.step(torch.from_numpy(rng.integers(0, 7, size=(3, store.num_symbols))))
        bars.append(res.obs.bar.clone())
        rewards.append(res.reward.clone())
    return torch.stack(bars), torch.stack(rewards)


def test_episodes_stay_inside_the_bar_range_and_runs_repeat():
    store = make_store(num_bars=220, num_symbols=4, seed=2)
    bars, rewards = _random_run({}, store)
    assert bars.min() >= 100 and bars.max() <= 179  # fills at t+1 <= 179 too: truncation at the range end
    again_bars, again_rewards = _random_run({}, store)
    assert torch.equal(bars, again_bars) and torch.equal(rewards, again_rewards)
    other_bars, _ = _random_run({}, store, seed=1)
    assert not torch.equal(bars, other_bars)


def test_unchecked_out_of_range_ids_never_read_out_of_bounds(backend):
    if backend != "native":
        pytest.skip("the torch backend's gather raises on out-of-range ids")
    close = np.full((6, 2), 100.0)
    env, _ = make_env(market_from_prices(close), check_actions=False)
    res = env.step(torch.tensor([[9, -3]]))
    assert res.executed_action[0].tolist() == [H, H] and res.info["invalid_action"][0].all()


def test_reset_can_start_under_a_given_directive():
    env, default = make_env(make_store(num_bars=40, num_symbols=3, seed=2), num_envs=2)
    held = int(default.directive[0]) - 1  # another directive of the grid
    obs = env.reset(seed=0, directive=held)
    assert obs.directive.tolist() == [held, held] and bool(obs.master_due.all())
    risk, cap, limit = env.directives[held].tolist()
    assert obs.directive_features[0].tolist() == pytest.approx([risk, cap, limit / 3])
    assert env.reset(seed=0).directive.tolist() == default.directive.tolist()  # not sticky
    interval = env.cfg.master.interval
    resumed = env.reset(seed=0, directive=held, elapsed=interval - 1)  # a desk between master bars
    assert not bool(resumed.master_due.any()) and env.k.tolist() == [interval - 1] * 2
    assert resumed.directive.tolist() == [held, held]
    assert bool(env.reset(seed=0, elapsed=interval).master_due.all())
