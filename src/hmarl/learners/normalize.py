"""Optional reward scaling (``ppo.norm_reward``): rewards divided by a running std of the discounted return,
per agent stream, as CleanRL's NormalizeReward. Off by default (Stage 1 setting)."""

from __future__ import annotations

import torch


class RewardScaler:
    def __init__(self, shape: tuple[int, ...], gamma: float, device: torch.device, eps: float = 1e-8):
        self.gamma, self.eps = gamma, eps
        self.ret = torch.zeros(shape, dtype=torch.float64, device=device)
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)
        self.count = torch.full((), 1e-4, dtype=torch.float64, device=device)

    def __call__(self, reward: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
        """Scale ``reward`` (N, S); ``ended`` (N,) restarts the discounted return of finished episodes."""
        self.ret.mul_(self.gamma).add_(reward.double())
        batch_mean, batch_var, n = self.ret.mean(), self.ret.var(unbiased=False), self.ret.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total
        self.ret.mul_((~ended).double().unsqueeze(1))
        return (reward.double() / torch.sqrt(self.var + self.eps)).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"ret": self.ret, "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(getattr(self, k).device, copy=True))
