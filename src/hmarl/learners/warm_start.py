"""Warm start: fit the trunk and actor heads to the SL prior's decision boundaries before PPO.

The states come from one rollout of the masked random policy on the training bars; the target at each
(state, symbol) is the SL prior over the allowed actions (:mod:`hmarl.learners.sl_prior`), fitted by
minimizing KL(prior || policy). Under DDP the gradients are averaged over ranks.
"""

from __future__ import annotations

import contextlib

import torch

from hmarl.agents import distributions as dist
from hmarl.agents.inputs import AgentTables, PolicyObs
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig
from hmarl.env.vec_env import MarketEnv
from hmarl.learners.collect import collect, random_policy
from hmarl.learners.distributed import DistInfo, all_reduce_mean
from hmarl.learners.rollout import RolloutBuffer
from hmarl.learners.sl_prior import action_prior, decision_group


def warm_start(
    agent: SymbolAgent,
    env: MarketEnv,
    tables: AgentTables,
    buf: RolloutBuffer,
    obs: PolicyObs,
    gen: torch.Generator,
    cfg: HmarlConfig,
    info: DistInfo,
) -> dict[str, float]:
    """Fit trunk + actor heads to the SL prior on the states of one masked-random rollout."""
    timers = {"env": 0.0, "policy": 0.0}
    collect(env, random_policy(gen), buf, obs, timers, contextlib.nullcontext())
    params = [q for name, q in agent.named_parameters() if not name.startswith(("critic.", "encoder."))]
    opt = torch.optim.Adam(params, lr=cfg.agent.warm_start_lr)
    rows_total = buf.num_steps * buf.num_envs
    mb = max(1, rows_total // cfg.ppo.num_minibatches)
    valid = buf.valid.flatten()

    def fit_loss(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = buf.observations(rows)
        logp = dist.masked_logits(agent.actor(agent.trunk(o, tables)).float(), o.mask)
        prior = action_prior(tables.sl_probs(o.bar), o.mask, cfg.agent.prior_smoothing)
        w = valid[rows].float().unsqueeze(1).expand(logp.shape[:2])
        kl = dist.kl(prior, logp, o.mask)  # KL(prior || policy): cover the prior's modes
        agree = (decision_group(logp) == decision_group(prior)).float()  # hold / buy / sell decision
        return (kl * w).sum() / w.sum().clamp_min(1.0), (agree * w).sum() / w.sum().clamp_min(1.0)

    for _ in range(cfg.agent.warm_start_steps):
        rows = torch.randint(0, rows_total, (mb,), generator=gen, device=gen.device).to(buf.reward.device)
        loss, _ = fit_loss(rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if info.distributed:
            for q in params:
                q.grad = all_reduce_mean(q.grad, info)
        opt.step()
    with torch.no_grad():
        loss, agree = fit_loss(torch.arange(rows_total, device=buf.reward.device))
    return {"warm_start_kl": float(loss), "warm_start_agreement": float(agree)}
