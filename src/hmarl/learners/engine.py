"""The PPO update loop shared by the symbol agents and the master (CleanRL's inner loop, in one place):

    for each epoch: shuffle the rollout's rows -> for each minibatch: loss -> guard -> backward
                    -> clip the gradient norm -> optimizer step;  stop early when the epoch's mean
                    approximate KL (averaged over ranks) exceeds ``target_kl``

What differs between the trainers comes in as arguments: the minibatch loss (the symbol agents' clipped
objective with the KL-to-SL-prior term, or the master's MAPPO / IPPO objective), the parameters to clip
and the *step guard*, the one place a bad minibatch is handled. The non-finite policy:

- :func:`skip_nonfinite` (symbol agents): a minibatch whose loss is non-finite on any rank is skipped on
  every rank; it shows as a NaN ``grad_norm`` and in the ``nonfinite_minibatches`` count;
- the master's divergence guard (:mod:`hmarl.learners.master_trainer`) raises before the optimizer step,
  so the run stops with its last good checkpoint intact.

A guard that returns False skips the step; one that raises stops the run. Guards reduce over ranks, so
every rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hmarl.learners.distributed import DistInfo, all_reduce_mean

# rows (a minibatch of flattened rollout rows) -> total loss, named detached terms
MinibatchLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
# (loss, terms) -> True: take the optimizer step; False: skip it (counted as non-finite); or raise
StepGuard = Callable[[torch.Tensor, dict[str, torch.Tensor]], bool]
# the epoch's per-minibatch approx_kl terms -> their mean (a tensor, reduced over ranks by the loop)
EpochKL = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class EpochSettings:
    update_epochs: int
    num_minibatches: int
    max_grad_norm: float
    target_kl: float | None  # None: no early stop


def skip_nonfinite(info: DistInfo) -> StepGuard:
    """Skip the step everywhere when the loss is non-finite on any rank."""

    def guard(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> bool:
        return float(all_reduce_mean(torch.isfinite(loss).float(), info)) == 1.0

    return guard


def stacked_mean(kls: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the minibatches' approx_kl in their own precision."""
    return torch.stack(kls).mean()


def ppo_epochs(
    settings: EpochSettings,
    rows_total: int,
    minibatch_loss: MinibatchLoss,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    gen: torch.Generator,
    device: torch.device,
    info: DistInfo,
    guard: StepGuard,
    epoch_kl: EpochKL = stacked_mean,
) -> dict[str, float]:
    """Minibatch epochs over ``rows_total`` rollout rows (shuffled by ``gen``, then moved to ``device``).
    Returns the mean of every loss term as ``loss_<name>``, ``loss_epochs`` and ``nonfinite_minibatches``."""
    mb_size = max(1, rows_total // settings.num_minibatches)
    sums: dict[str, float] = {}
    count, epochs, nonfinite = 0, 0, 0
    for _epoch in range(settings.update_epochs):
        perm = torch.randperm(rows_total, generator=gen, device=gen.device).to(device)
        kls = []
        for start in range(0, rows_total - mb_size + 1, mb_size):
            loss, terms = minibatch_loss(perm[start : start + mb_size])
            optimizer.zero_grad(set_to_none=True)
            if guard(loss, terms):
                loss.backward()
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
            else:
                terms["grad_norm"] = torch.tensor(float("nan"))
                nonfinite += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            kls.append(terms["approx_kl"])
            count += 1
        epochs += 1
        kl = float(all_reduce_mean(epoch_kl(kls), info))
        if settings.target_kl is not None and kl > settings.target_kl:
            break
    out = {f"loss_{k}": v / max(1, count) for k, v in sums.items()}
    out["loss_epochs"] = float(epochs)
    out["nonfinite_minibatches"] = float(nonfinite)
    return out


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the given samples (NaN when it is undefined)."""
    ok = returns.numel() > 1 and float(returns.var()) > 0
    return float(1.0 - (returns - values).var() / returns.var()) if ok else float("nan")
