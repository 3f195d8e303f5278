"""The symbol agent: batched per-symbol heads, masked categorical, init gains, shared-head ablation,
the table projection shortcut, the SL prior and the saved-agent format."""

from __future__ import annotations

import math

import pytest
import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, PolicyObs
from hmarl.agents.params import AgentConfig
from hmarl.agents.saved import load_agent, save_agent
from hmarl.agents.symbol import BatchedMLP, SymbolAgent
from hmarl.env.actions import Action
from hmarl.learners.params import SLPriorConfig
from hmarl.learners.sl_prior import action_prior, prior_coef

S, E, ENV_DIM, T = 5, 12, 6, 40


def make_agent(**overrides) -> SymbolAgent:
    cfg = AgentConfig(trunk_dim=16, hidden=8, **overrides)
    return SymbolAgent(cfg, num_symbols=S, market_dim=E, env_dim=ENV_DIM, counts_scale=50.0, seed=3)


def make_tables(seed: int = 0) -> AgentTables:
    g = torch.Generator().manual_seed(seed)
    market = torch.randn(T, S, E, generator=g)
    sl = torch.softmax(torch.randn(T, S, 3, 3, generator=g), -1).flatten(2)
    return AgentTables(market, sl, None, torch.device("cpu"))


def make_obs(batch: int, seed: int = 1) -> PolicyObs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, S, 7, generator=g) > 0.4
    mask[..., Action.HOLD] = True
    return PolicyObs(
        torch.randint(0, T, (batch,), generator=g),
        torch.randn(batch, S, 7, generator=g).half(),
        torch.randint(0, 10, (batch, S, 7), generator=g).to(torch.uint8),
        mask,
        torch.randn(batch, ENV_DIM, generator=g).half(),
    )


def test_batched_heads_equal_one_mlp_per_symbol():
    head = BatchedMLP(S, 16, 8, 7, 0.1, torch.Generator().manual_seed(0))
    h = torch.randn(9, S, 16)
    out = head(h)
    for s in range(S):  # the slow, obvious version: symbol s's own two-layer MLP
        hidden = torch.tanh(h[:, s] @ head.w1[s] + head.b1[s])
        torch.testing.assert_close(out[:, s], hidden @ head.w2[s] + head.b2[s])


def test_masked_actions_are_never_sampled_and_logprob_entropy_cover_allowed_only():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, S, 7, generator=g) > 0.5
    mask[..., 0] = True
    logits = torch.randn(64, S, 7, generator=g) * 3
    logp = dist.masked_logits(logits, mask)
    for _ in range(50):
        a = dist.sample(logp, g)
        assert bool(mask.gather(-1, a.unsqueeze(-1)).all())
    # reference: a categorical over the allowed actions only
    for b, s in [(0, 0), (5, 3), (63, 4)]:
        allowed = mask[b, s].nonzero().squeeze(-1)
        ref = torch.distributions.Categorical(logits=logits[b, s, allowed])
        torch.testing.assert_close(dist.entropy(logp, mask)[b, s], ref.entropy())
        for i, a in enumerate(allowed):
            torch.testing.assert_close(logp[b, s, a], ref.log_prob(torch.tensor(i)))
    assert torch.isfinite(dist.entropy(logp, mask)).all()
    assert (logp.exp() * ~mask).sum() == 0  # probability exactly 0 where masked


def test_sampling_frequencies_follow_the_masked_distribution():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]]]).expand(20000, 1, 7)
    mask = torch.tensor([True, True, True, False, False, False, False]).expand(20000, 1, 7)
    logp = dist.masked_logits(logits, mask)
    a = dist.sample(logp, torch.Generator().manual_seed(1))
    freq = torch.bincount(a.flatten(), minlength=7).double() / a.numel()
    torch.testing.assert_close(
        freq[:3], torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).double(), atol=0.02, rtol=0
    )


def test_actor_gain_gives_a_near_uniform_initial_policy():
    agent = make_agent()
    obs, tables = make_obs(32), make_tables()
    logits, value = agent(obs, tables)
    assert logits.shape == (32, S, 7) and value.shape == (32, S)
    loud = SymbolAgent(
        AgentConfig(trunk_dim=16, hidden=8, actor_gain=1.0),
        num_symbols=S,
        market_dim=E,
        env_dim=ENV_DIM,
        counts_scale=50.0,
        seed=3,
    )
    quiet_spread = logits.std().item()
    assert quiet_spread < 0.2 * loud(obs, tables)[0].std().item()
    entropy = dist.entropy(dist.masked_logits(logits, obs.mask), obs.mask)
    ceiling = torch.log(obs.mask.sum(-1).float())
    assert (entropy > 0.95 * ceiling).float().mean() > 0.9


def test_shared_head_ablation_has_one_head_and_tells_symbols_apart():
    per_symbol, shared = make_agent(), make_agent(head="shared", symbol_embed_dim=4)
    n_per = sum(p.numel() for p in per_symbol.actor.parameters())
    n_shared = sum(p.numel() for p in shared.actor.parameters())
    assert n_shared < n_per / 2
    obs, tables = make_obs(4), make_tables()
    # the same inputs for every symbol: only the symbol embedding can make the outputs differ
    same = PolicyObs(
        obs.bar, obs.agent[:, :1].expand(-1, S, -1), obs.counts[:, :1].expand(-1, S, -1), obs.mask, obs.env
    )
    flat = AgentTables(
        tables.market[:, :1].expand(-1, S, -1), tables.sl[:, :1].expand(-1, S, -1), None, torch.device("cpu")
    )
    logits, _ = shared(same, flat)
    assert (logits[:, 0] - logits[:, 1]).abs().max() > 1e-6


def test_projecting_the_table_is_the_same_function_as_gathering_first():
    agent, tables = make_agent(), make_tables()
    small, large = make_obs(3), make_obs(2 * T)  # fewer / more rows than the table: the two code paths
    projected = agent.market_projection(tables)
    for obs in (small, large):
        direct = agent(obs, tables)[0]
        via_table = agent(obs, tables, projected)[0]
        torch.testing.assert_close(direct, via_table, rtol=1e-5, atol=1e-6)


def test_shrink_actor_touches_only_the_guarded_symbols():
    agent = make_agent()
    before = agent.actor.w2.detach().clone()
    agent.shrink_actor(torch.tensor([True, False, False, True, False]), 0.5)
    torch.testing.assert_close(agent.actor.w2[[0, 3]], before[[0, 3]] * 0.5)
    torch.testing.assert_close(agent.actor.w2[[1, 2, 4]], before[[1, 2, 4]])


def test_saved_agent_loads_with_weights_only_and_acts_the_same(tmp_path):
    agent = make_agent()
    path = tmp_path / "agent.pt"
    save_agent(
        path,
        agent,
        agent.state_dict(),
        symbols=[f"S{i}" for i in range(S)],
        feature_names=["f"],
        fingerprint="x",
        fold=0,
        encoder=None,
    )
    payload = torch.load(path, weights_only=True)
    assert payload["dims"]["num_symbols"] == S
    loaded, meta = load_agent(path)
    obs, tables = make_obs(6), make_tables()
    torch.testing.assert_close(loaded(obs, tables)[0], agent(obs, tables)[0])
    assert meta["fingerprint"] == "x"


def test_sl_prior_follows_the_sl_rule_and_respects_masks():
    flat_mask = torch.tensor([True, True, True, True, False, False, False])  # flat: hold or buy
    held_mask = torch.tensor([True, False, False, False, True, True, False])  # held, not winning
    up = torch.tensor([0.1, 0.2, 0.7] * 3)  # down / flat / up of each model
    down = torch.tensor([0.7, 0.2, 0.1] * 3)
    # the SL rule: buy on a predicted rise when flat, sell on a predicted fall when held, else hold
    for sl, mask, rule in [
        (up, flat_mask, [1, 2, 3]),
        (down, flat_mask, [0]),
        (down, held_mask, [4, 5]),
        (up, held_mask, [0]),
    ]:
        logp = action_prior(sl, mask, smoothing=0.1)
        p = logp.exp()
        assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-5)
        assert float(p[~mask].sum()) == 0.0 and bool((p[mask] > 0).all())
        assert float(p[rule].sum()) > 0.6
    # the KL to itself is 0, to another distribution > 0
    logp = action_prior(up, flat_mask, 0.1)
    assert float(dist.kl(logp, logp, flat_mask)) == pytest.approx(0.0, abs=1e-7)
    holder = dist.masked_logits(torch.tensor([4.0, 0, 0, 0, 0, 0, 0]), flat_mask)  # mostly HOLD
    assert float(dist.kl(holder, logp, flat_mask)) > 0.5


def test_sl_prior_coefficient_anneals_linearly():
    cfg = SLPriorConfig(coef=0.05, final_coef=0.01, anneal_steps=1000)
    assert prior_coef(0, cfg) == pytest.approx(0.05)
    assert prior_coef(500, cfg) == pytest.approx(0.03)
    assert prior_coef(5000, cfg) == pytest.approx(0.01)
    assert prior_coef(0, SLPriorConfig(enabled=False)) == 0.0
