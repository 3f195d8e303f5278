"""The learner's pieces, each against a slow obvious reference or a hand-checked case: GAE with next-step
autoreset, the clipped PPO loss, the Stage 5 exploration stack, curriculum, rollout storage, reward scaling,
and exact checkpoints (simulator state, random generators, files)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmarl.agents.inputs import PolicyObs, compact
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.learners.checkpoint import CheckpointStore, capture_state, restore_state, rng_state, set_rng_state
from hmarl.learners.curriculum import active_count
from hmarl.learners.entropy import EntropyController, adaptive_multiplier, hold_then_linear
from hmarl.learners.gae import gae
from hmarl.learners.normalize import RewardScaler
from hmarl.learners.params import (
    AdaptiveEntropyConfig,
    CurriculumConfig,
    EntropyGuardConfig,
    EntropyScheduleConfig,
)
from hmarl.learners.ppo import LossCoefs, ppo_loss
from hmarl.learners.rollout import RolloutBuffer

sys.path.insert(0, str(Path(__file__).parent))
from env_fixtures import env_config, make_store, reward_config  # noqa: E402


# --------------------------------------------------------------------------- GAE
def gae_reference(rewards, values, next_value, terminated, ended, valid, gamma, lam):
    t_steps, n_envs, n_sym = rewards.shape
    adv = torch.zeros_like(rewards)
    for n in range(n_envs):
        for s in range(n_sym):
            following = 0.0
            for t in reversed(range(t_steps)):
                if not valid[t, n]:
                    adv[t, n, s], following = 0.0, 0.0
                    continue
                v_next = next_value[n, s] if t == t_steps - 1 else values[t + 1, n, s]
                if terminated[t, n]:
                    v_next = 0.0
                delta = rewards[t, n, s] + gamma * v_next - values[t, n, s]
                adv[t, n, s] = delta if ended[t, n] else delta + gamma * lam * following
                following = adv[t, n, s]
    return adv


def test_gae_matches_the_reference_with_terminations_truncations_and_autoreset_steps():
    g = torch.Generator().manual_seed(0)
    t_steps, n_envs, n_sym = 24, 3, 2
    rewards = torch.randn(t_steps, n_envs, n_sym, generator=g, dtype=torch.float64)
    values = torch.randn(t_steps, n_envs, n_sym, generator=g, dtype=torch.float64)
    next_value = torch.randn(n_envs, n_sym, generator=g, dtype=torch.float64)
    ended = torch.rand(t_steps, n_envs, generator=g) < 0.15
    terminated = ended & (torch.rand(t_steps, n_envs, generator=g) < 0.5)
    valid = torch.ones_like(ended)
    valid[1:] = ~ended[:-1]  # next-step autoreset: the step after an end is a reset step
    assert terminated.any() and (ended & ~terminated).any() and (~valid).any()
    adv, ret = gae(rewards, values, next_value, terminated, ended, valid, 0.97, 0.9)
    torch.testing.assert_close(
        adv, gae_reference(rewards, values, next_value, terminated, ended, valid, 0.97, 0.9)
    )
    torch.testing.assert_close(ret, adv + values)
    assert (adv[~valid] == 0).all()


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    rewards = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    values = torch.tensor([0.5, 0.1, 0.2]).view(3, 1, 1)
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, _ = gae(rewards, values, torch.tensor([[4.0]]), no, no, ~no, 0.5, 1.0)
    expected = torch.tensor(
        [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4 - 0.5, 2 + 0.5 * 3 + 0.25 * 4 - 0.1, 3 + 0.5 * 4 - 0.2]
    )
    torch.testing.assert_close(adv.flatten(), expected)


# --------------------------------------------------------------------------- PPO loss
def _loss_inputs(batch=4, sym=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, sym, 7, dtype=torch.bool)
    return {
        "logits": torch.randn(batch, sym, 7, generator=g, requires_grad=True),
        "mask": mask,
        "actions": torch.randint(0, 7, (batch, sym), generator=g),
        "new_value": torch.randn(batch, sym, generator=g, requires_grad=True),
        "old_logprob": torch.randn(batch, sym, generator=g) - 2.0,
        "old_value": torch.randn(batch, sym, generator=g),
        "advantages": torch.randn(batch, sym, generator=g),
        "returns": torch.randn(batch, sym, generator=g),
        "weight": torch.ones(batch, sym),
        "log_prior": None,
    }


COEFS = LossCoefs(clip=0.2, clip_vloss=True, vf=0.5, ent=0.01, sl_kl=0.0, norm_adv=False)


def test_ppo_loss_returns_named_terms_and_ignores_zero_weight_entries():
    x = _loss_inputs()
    total, terms = ppo_loss(**x, coefs=COEFS)
    assert set(terms) >= {"policy_loss", "value_loss", "entropy", "sl_kl", "total", "approx_kl", "clipfrac"}
    torch.testing.assert_close(
        total.detach(), terms["policy_loss"] + 0.5 * terms["value_loss"] - 0.01 * terms["entropy"]
    )
    y = dict(x)
    y["weight"] = x["weight"].clone()
    y["weight"][0] = 0.0
    y["advantages"] = x["advantages"].clone()
    y["advantages"][0] = 1e6  # an excluded entry may hold anything
    y["returns"] = x["returns"].clone()
    y["returns"][0] = -1e6
    z = dict(x)
    z["weight"] = y["weight"]
    a, _ = ppo_loss(**y, coefs=COEFS)
    b, _ = ppo_loss(**z, coefs=COEFS)
    torch.testing.assert_close(a, b)


def test_policy_gradient_is_zero_beyond_the_clip_range():
    x = _loss_inputs(batch=1, sym=1)
    logp_now = torch.log_softmax(x["logits"].detach(), -1)[0, 0, x["actions"][0, 0]]
    coefs = LossCoefs(clip=0.2, clip_vloss=False, vf=0.0, ent=0.0, sl_kl=0.0, norm_adv=False)
    for adv, ratio, zero in [(1.0, 1.5, True), (-1.0, 0.5, True), (1.0, 1.1, False), (-1.0, 1.5, False)]:
        x["logits"].grad = None
        x["old_logprob"] = (logp_now - np.log(ratio)).view(1, 1)
        x["advantages"] = torch.tensor([[adv]])
        loss, _ = ppo_loss(**x, coefs=coefs)
        loss.backward()
        assert (x["logits"].grad.abs().max() == 0) == zero, (adv, ratio)


def test_value_clipping_takes_the_worse_of_clipped_and_unclipped():
    x = _loss_inputs(batch=1, sym=1)
    x["old_value"] = torch.tensor([[0.0]])
    x["new_value"] = torch.tensor([[1.0]], requires_grad=True)
    x["returns"] = torch.tensor([[2.0]])
    coefs = LossCoefs(clip=0.2, clip_vloss=True, vf=1.0, ent=0.0, sl_kl=0.0, norm_adv=False)
    _, terms = ppo_loss(**x, coefs=coefs)
    # unclipped (1 - 2)^2 = 1, clipped (0.2 - 2)^2 = 3.24: the max, halved
    assert float(terms["value_loss"]) == pytest.approx(0.5 * 3.24)


# --------------------------------------------------------------------------- exploration stack
def test_hold_then_linear_entropy_schedule_has_the_seed_shape():
    cfg = EntropyScheduleConfig()  # 0.08 -> 0.03, hold 10k, decay 40k, min 0.03
    f = lambda step: hold_then_linear(step, cfg.start, cfg.end, cfg.hold_steps, cfg.decay_steps, cfg.min_coef)  # noqa: E731
    assert f(0) == f(10_000) == pytest.approx(0.08)
    assert f(30_000) == pytest.approx(0.055)
    assert f(50_000) == f(90_000) == pytest.approx(0.03)
    assert hold_then_linear(100, 0.08, 0.0, 0, 50, 0.03) == pytest.approx(0.03)  # the floor


def test_adaptive_bonus_and_guard_respect_warmup_target_and_threshold():
    ada = AdaptiveEntropyConfig()  # target 0.55, scale 0.35, warmup 4k
    assert adaptive_multiplier(3_999, 0.0, ada) == 1.0
    assert adaptive_multiplier(4_000, 0.55, ada) == 1.0
    assert adaptive_multiplier(4_000, 0.0, ada) == pytest.approx(1.35)
    ctrl = EntropyController(EntropyScheduleConfig(), ada, EntropyGuardConfig())  # threshold 0.22, warmup 4k
    low = torch.tensor([0.1, 0.5, 0.21, 0.9])
    assert not ctrl.observe(1_000, 0.3, low).any() and ctrl.interventions == 0
    hit = ctrl.observe(5_000, 0.3, low)
    assert hit.tolist() == [True, False, True, False] and ctrl.interventions == 2
    assert ctrl.coef(5_000) == pytest.approx(0.08 * (1 + 0.35 * (0.55 - 0.3) / 0.55))
    clone = EntropyController(EntropyScheduleConfig(), ada, EntropyGuardConfig())
    clone.load_state_dict(ctrl.state_dict())
    assert clone.coef(6_000) == ctrl.coef(6_000) and clone.interventions == 2


def test_curriculum_onboards_symbols_in_stages():
    cfg = CurriculumConfig(enabled=True, stages=[(0, 0.25), (100, 0.5), (200, 1.0)])
    assert [active_count(s, cfg, 143) for s in (0, 99, 100, 250)] == [36, 36, 72, 143]
    assert active_count(0, CurriculumConfig(), 143) == 143
    with pytest.raises(ValueError, match="starting at step 0"):
        CurriculumConfig(stages=[(10, 0.5), (20, 1.0)])


def test_reward_scaler_divides_by_the_running_return_std():
    scaler = RewardScaler((4, 2), gamma=0.9, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = scaler(
            torch.randn(4, 2, generator=g, dtype=torch.float64) * 10.0, torch.zeros(4, dtype=torch.bool)
        )
    assert 0.05 < float(out.abs().mean()) < 1.0  # raw rewards are ~8 in magnitude


# --------------------------------------------------------------------------- rollout storage
def test_rollout_buffer_stores_indices_and_gives_back_what_the_policy_saw():
    store = make_store(num_bars=120, num_symbols=5)
    cfg = env_config(num_envs=3)
    env = MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=0)
    obs = compact(env.reset())
    buf = RolloutBuffer(2, 3, 5, obs.env.shape[1], torch.device("cpu"))
    zeros = torch.zeros(3, 5)
    buf.add_obs(1, obs, torch.zeros(3, 5, dtype=torch.long), zeros, zeros)
    back = buf.observations(torch.arange(3, 6))  # rows of step 1
    for a, b in zip(back, obs, strict=True):
        assert torch.equal(a, b)
    # no windows, no embeddings: ~37 bytes per agent-step at 143 symbols, so the full
    # 128 envs x 2048 steps x 143 symbols rollout is ~1.3 GiB (plus 8 bytes of advantages/returns)
    per_agent_step = RolloutBuffer(2, 3, 143, obs.env.shape[1], torch.device("cpu")).nbytes() / (2 * 3 * 143)
    assert per_agent_step < 37
    assert per_agent_step * 128 * 2048 * 143 < 1.35 * 2**30


# --------------------------------------------------------------------------- checkpoints
def _env(seed=5):
    store = make_store(num_bars=150, num_symbols=4, seed=1)
    cfg = env_config(num_envs=3, episode_length=9)  # short episodes: autoresets draw from the generator
    return MarketEnv(MarketData.from_store(store, cfg), cfg, reward_config(), seed=seed)


def _run(env, steps, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        res = env.step(torch.randint(0, 7, (3, 4), generator=g))
        out.append(
            torch.cat(
                [
                    res.reward.flatten(),
                    res.obs.agent.flatten().double(),
                    res.obs.bar.double(),
                    res.obs.mask.flatten().double(),
                ]
            )
        )
    return torch.stack(out)


def test_simulator_state_restores_exactly_into_a_fresh_env():
    env = _env()
    env.reset(seed=5)
    _run(env, 13, seed=0)
    saved = capture_state(env)
    expected = _run(env, 20, seed=1)
    fresh = _env(seed=99)  # other seed: everything that matters must come from the checkpoint
    fresh.reset(seed=99)
    restore_state(fresh, saved)
    assert torch.equal(_run(fresh, 20, seed=1), expected)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state().values(), env.state().values(), strict=True))


def test_rng_state_round_trips_every_generator():
    state = rng_state()
    # numpy's legacy global generator is what the checkpoint saves
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_checkpoint_store_keeps_the_latest_complete_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.load_latest() is None
    for update in (2, 4, 6):
        store.save(
            update,
            {
                "update": update,
                "w": torch.full((3,), float(update)),
                "obs": list(PolicyObs(*[torch.zeros(1)] * 5)),
            },
        )
    assert store.latest_update() == 6
    assert sorted(p.name for p in tmp_path.glob("update_*")) == ["update_0000004", "update_0000006"]
    assert torch.equal(store.load_latest()["w"], torch.full((3,), 6.0))
    (tmp_path / "update_0000008").mkdir()  # a half-written later checkpoint is never picked
    assert store.load_latest()["update"] == 6


def test_bad_agent_and_ppo_params_are_refused_naming_the_key():
    from hmarl.config import ConfigError, build_config

    for override, key in [
        ("agent.head=mixed", "agent.head"),
        ("ppo.num_steps=0", "ppo.num_steps"),
        ("ppo.curriculum.stages=[[5, 1.0]]", "ppo.curriculum"),
        ("ppo.entropy.hold=1", "ppo.entropy.hold"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_config({}, [override])
