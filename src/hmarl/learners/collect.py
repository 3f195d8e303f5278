"""Rollout collection: the policies that act in the simulator and the loop that fills the rollout buffer.

A policy maps the compact observation to (action, log-prob, value, masking events); the trained agent
samples from its masked distribution, the masked random policy is uniform over the allowed actions.
``collect`` runs ``buffer.num_steps`` env steps, timing the simulator and the policy separately; with a
``director`` (the master, in alternating fine-tuning rounds) the directive changes where the master is due.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, PolicyObs, compact
from hmarl.agents.symbol import SymbolAgent
from hmarl.env.actions import Action
from hmarl.env.params import REWARD_COMPONENTS
from hmarl.env.spec import Observation
from hmarl.env.vec_env import MarketEnv
from hmarl.learners.normalize import RewardScaler
from hmarl.learners.policy import SymbolActorCritic
from hmarl.learners.rollout import RolloutBuffer

# obs -> action, logprob, value, masking events (2,): picks of the unmasked policy that the mask ruled out
Policy = Callable[[PolicyObs], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
# full simulator observation -> directive ids (N,): the master
Director = Callable[[Observation], torch.Tensor]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (so timers measure it); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agent_policy(
    agent: SymbolAgent, tables: AgentTables, gen: torch.Generator, active: torch.Tensor
) -> Policy:
    """Sample from the masked policy; inactive (curriculum) symbols hold. The market table is projected
    once per rollout (the weights do not change during it)."""
    all_active = bool(active.all())
    with torch.no_grad():
        projected = agent.market_projection(tables)

    policy = SymbolActorCritic(agent, tables, projected=projected)

    def act(obs: PolicyObs):
        av = policy.get_action_and_value(obs, generator=gen)
        action = av.action if all_active else av.action * active
        return action, av.pi.log_prob(action), av.value.float(), masking_events(av.logits, obs.mask)

    return act


def masking_events(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[blocked BUY, restored SELL]``: agent-steps whose unmasked favourite action was a BUY_* the mask
    forbids (a position is held) or a SELL_* it forbids (flat); the masked distribution moves that mass
    back onto allowed actions. Evidence that the strict masks act (the Stage 5 warm-up check)."""
    raw = logits.argmax(-1)
    ruled_out = ~mask.gather(-1, raw.unsqueeze(-1)).squeeze(-1)
    buy = (raw >= Action.BUY_SMALL) & (raw <= Action.BUY_LARGE)
    sell = (raw == Action.SELL_PARTIAL) | (raw == Action.SELL_ALL)
    return torch.stack([(ruled_out & buy).sum(), (ruled_out & sell).sum()]).double()


def random_policy(gen: torch.Generator) -> Policy:
    """Uniform over the allowed actions (the masked random baseline; warm-start states)."""

    def act(obs: PolicyObs):
        logp = dist.masked_logits(torch.zeros(obs.mask.shape, device=obs.mask.device), obs.mask)
        action = dist.sample(logp, gen)
        zeros = torch.zeros(action.shape, device=action.device)
        return (
            action,
            dist.log_prob(logp, action),
            zeros,
            torch.zeros(2, dtype=torch.float64, device=zeros.device),
        )

    return act


@dataclass
class RolloutSums:
    components: torch.Tensor  # (C,) sums of the unweighted reward components over agent-steps
    forced: torch.Tensor  # forced HOLDs (consecutive-action violations)
    mask_events: torch.Tensor  # (2,) blocked BUY / restored SELL picks (see masking_events)
    agent_steps: float = 0.0


def collect(
    env: MarketEnv,
    act: Policy,
    buf: RolloutBuffer,
    obs: PolicyObs,
    timers: dict[str, float],
    amp: contextlib.AbstractContextManager,
    scaler: RewardScaler | None = None,
    director: Director | None = None,
) -> tuple[PolicyObs, RolloutSums]:
    device = buf.reward.device
    sums = RolloutSums(
        torch.zeros(len(REWARD_COMPONENTS), dtype=torch.float64, device=device),
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros(2, dtype=torch.float64, device=device),
    )
    for t in range(buf.num_steps):
        t0 = time.perf_counter()
        if director is not None:
            obs = apply_director(env, director, obs)
        with torch.no_grad(), amp:
            action, logprob, value, events = act(obs)
            sums.mask_events += events
        buf.add_obs(t, obs, action, logprob, value)
        sync(device)
        t1 = time.perf_counter()
        res = env.step(action)
        sync(device)
        t2 = time.perf_counter()
        ended = res.terminated | res.truncated
        reward = scaler(res.reward, ended) if scaler is not None else res.reward.float()
        buf.add_result(t, reward, res.terminated, ended, ~res.info["reset"], res.executed_action)
        sums.components += res.components.sum((1, 2))
        sums.forced += res.info["forced_hold"].sum()
        obs = compact(res.obs)
        timers["policy"] += t1 - t0 + time.perf_counter() - t2
        timers["env"] += t2 - t1
    sums.agent_steps = float(buf.valid.sum()) * buf.num_symbols
    return obs, sums


def apply_director(env: MarketEnv, director: Director, obs: PolicyObs) -> PolicyObs:
    """The master's directive where it is due; ``obs`` refreshed (allocations and masks follow it)."""
    full = env._obs  # the full observation behind ``obs``: the master reads the portfolio state too
    if not bool(full.master_due.any()):
        return obs
    return compact(env.set_directive(director(full)))
