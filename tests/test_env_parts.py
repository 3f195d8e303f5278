"""Pieces of the simulator on their own: action window, telemetry, gathers, rollout memory, config."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from env_fixtures import env_config, make_store, reward_config, run_without_compiler
from hmarl.config import ConfigError, load_config
from hmarl.data.windows import FeatureWindows, gather_bars, gather_windows
from hmarl.env.actions import decode_directive, directive_index, grid_size
from hmarl.env.anti_collapse import ActionWindow, nonzero_bytes, tier_table, unpack_counts
from hmarl.env.market import MarketData
from hmarl.env.rollout_memory import allocate_rollout, pack_mask, rollout_bytes, unpack_mask
from hmarl.env.telemetry import action_telemetry, histogram_entropy
from hmarl.env.vec_env import MarketEnv

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_action_window_matches_a_recount_of_the_last_w_steps():
    n, s, w = 3, 4, 5
    window = ActionWindow(n, s, w, torch.device("cpu"))
    rng = np.random.default_rng(0)
    k = torch.zeros(n, dtype=torch.int64)
    history = [[deque(maxlen=w) for _ in range(s)] for _ in range(n)]
    for _ in range(60):
        actions = torch.from_numpy(rng.integers(0, 7, size=(n, s)))
        unique, _ = window.push(actions, k)
        k += 1
        for i in range(n):
            for j in range(s):
                history[i][j].append(int(actions[i, j]))
        counts = unpack_counts(window.packed)
        for i in range(n):
            for j in range(s):
                assert unique[i, j] == len(set(history[i][j]))
                assert counts[i, j].tolist() == [list(history[i][j]).count(a) for a in range(7)]
        reset = torch.from_numpy(rng.random(n) < 0.1)
        window.reset_where((~reset).long())
        k[reset] = 0
        for i in np.flatnonzero(reset.numpy()):
            history[i] = [deque(maxlen=w) for _ in range(s)]


def test_nonzero_bytes_and_tiers():
    words = torch.tensor([0, 1, 1 << 8, (3 << 48) | 5, sum(1 << (8 * a) for a in range(7)) * 50])
    assert nonzero_bytes(words).tolist() == [0, 1, 1, 2, 7]
    table = tier_table([(5, 0.3), (4, 0.2), (3, 0.1)], torch.float64, torch.device("cpu"))
    assert table.tolist() == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.3, 0.3]


def test_directive_grid_round_trip():
    cfg = env_config()
    assert grid_size(cfg) == 48
    for index in range(48):
        assert directive_index(cfg, *decode_directive(cfg, index)) == index


def test_gather_windows_are_past_bars_only():
    store = make_store(num_bars=50, num_symbols=3, num_features=2)
    fw = FeatureWindows(store, fold=0, window=6)
    bars = torch.tensor([5, 20, 49])
    slab = fw.windows(bars)
    assert slab.shape == (3, 3, 6, 2)
    for b, bar in enumerate(bars.tolist()):
        want = store.features[bar - 5 : bar + 1].transpose(1, 0, 2)
        np.testing.assert_allclose(slab[b].numpy(), want, rtol=1e-6)
    table = torch.arange(10.0).view(10, 1, 1)
    assert gather_bars(table, torch.tensor([[1, 2], [3, 4]])).shape == (2, 2, 1, 1)
    assert gather_windows(table, torch.tensor([4]), 3)[0, 0, :, 0].tolist() == [2.0, 3.0, 4.0]


def test_rollout_memory_fits_the_budget():
    gib = rollout_bytes(128, 2048, 143) / 2**30
    assert gib <= 4.0
    small = allocate_rollout(num_envs=3, num_steps=4, num_symbols=5)
    assert sum(t.nbytes for t in small.values()) == rollout_bytes(3, 4, 5)
    mask = torch.rand(4, 5, 7) > 0.5
    assert torch.equal(unpack_mask(pack_mask(mask)), mask)


def test_action_telemetry_from_facts():
    steps, n, s = 240, 2, 3
    policy = torch.randint(0, 7, (steps, n, s), generator=torch.Generator().manual_seed(0))
    executed = torch.zeros_like(policy)
    executed[::2] = policy[::2]
    out = action_telemetry(policy, executed)
    assert out["policy_action_entropy_mean"] == pytest.approx(np.log(7), abs=0.05)
    assert out["executed_action_entropy_mean"] < out["policy_action_entropy_mean"]
    assert out["voluntary_trade_rate_mean"] == pytest.approx((executed != 0).double().mean().item())
    assert out["sanitizer_trade_delta_mean"] == pytest.approx(
        (policy != 0).double().mean().item() - (executed != 0).double().mean().item()
    )
    assert out["unique_actions_per_window_min"] >= 4
    assert histogram_entropy(torch.tensor([[5.0, 0, 0]])).item() == 0.0


def test_episode_stats_of_a_hold_policy():
    store = make_store(num_bars=120, num_symbols=4)
    cfg = env_config(num_envs=2, episode_length=10)
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config())
    env.reset(seed=0)
    for _ in range(21):
        env.step(torch.zeros(2, 4, dtype=torch.int64))
    stats = env.get_episode_stats()
    assert stats["episodes"] == 4.0 and stats["ep_length_mean"] == 10.0
    assert stats["voluntary_trade_rate_mean"] == 0.0 and stats["executed_action_entropy_mean"] == 0.0
    assert stats["ep_unique_actions_mean"] == 1.0 and stats["ep_return_mean"] == 0.0
    assert stats["executed_fraction_HOLD"] == 1.0
    assert env.get_episode_stats() == {"episodes": 0.0, "episodes_dropped": 0.0}


def test_params_sections_and_named_weight_sets():
    cfg = load_config(PARAMS)
    assert cfg.env.commission_bps_round_trip == 15.0 and cfg.reward.roi_scale == 2.0
    assert cfg.reward.roi_clip == (0.5, 3.0) and cfg.env.diversity_tiers[0] == (5, 0.3)
    seed = load_config(PARAMS, ["reward.weights=seed_formula"]).reward.weight_vector()
    assert seed[:7] == [10.0, 5.0, 2.0, 3.0, 5.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="reward.*unknown weight set 'nope'"):
        load_config(PARAMS, ["reward.weights=nope"])
    with pytest.raises(ConfigError, match=r"env: .*max_leverage > 1 needs allow_leverage"):
        load_config(PARAMS, ["env.max_leverage=2.0"])
    with pytest.raises(ConfigError, match="env.colour: unknown key"):
        load_config(PARAMS, ["env.colour=1"])


def test_auto_backend_falls_back_to_torch_without_a_compiler(tmp_path):
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from env_fixtures import env_config, make_store, reward_config\n"
        "from hmarl.env.market import MarketData\n"
        "from hmarl.env.vec_env import MarketEnv\n"
        "cfg = env_config()\n"
        "env = MarketEnv(MarketData.from_store(make_store(60, 2), cfg), cfg, reward_config())\n"
        "env.reset(); print(env.backend)\n"
    )
    assert run_without_compiler(code, tmp_path).strip() == "torch"
