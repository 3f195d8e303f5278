"""Masked-forecast pretraining (self-supervised, one fold's train bars only) and embedding inference.

Loss = MSE of the reconstructed masked cells (random whole time steps + random single cells are zeroed,
i.e. set to the train mean) + ``forecast_weight`` x MSE of the next ``k`` one-bar log returns in units of
the trailing volatility at the bar (``sl.vol_window``, as the labels), so calm and turbulent periods weigh
alike. Validation reports both next to naive baselines: the last unmasked value
of the same feature / the last observed return ("last"), and the train mean ("mean").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from hmarl.data.windows import gather_windows
from hmarl.encoders.model import PretrainHeads, SharedEncoder
from hmarl.encoders.params import EncoderConfig

log = logging.getLogger(__name__)


def one_bar_returns(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """``(T, S)`` log(close[t] / close[t-1]); NaN at the first bar or where either bar is not tradable."""
    out = np.full(close.shape, np.nan)
    ok = tradable[1:] & tradable[:-1] & (close[1:] > 0) & (close[:-1] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[1:] = np.where(ok, np.log(close[1:] / close[:-1]), np.nan)
    return out


def forward_returns(r1: np.ndarray, k: int) -> np.ndarray:
    """``(T, S, k)``: the one-bar returns of bars t+1 .. t+k (NaN past the end)."""
    out = np.full((*r1.shape, k), np.nan)
    for i in range(1, k + 1):
        out[:-i, :, i - 1] = r1[i:]
    return out


@dataclass
class PretrainData:
    x: torch.Tensor  # (T, S, F) fold-normalized features
    targets: torch.Tensor  # (T, S, k) next-k returns in units of the trailing vol at t; NaN where undefined
    last_return: torch.Tensor  # (T, S) the bar's own return, same units (naive forecast)
    target_mean: torch.Tensor  # (k,) train mean of the targets (naive forecast)

    @classmethod
    def build(
        cls, x: torch.Tensor, r1: np.ndarray, vol: np.ndarray, k: int, train_bars: np.ndarray
    ) -> PretrainData:
        """``vol`` (T, S): trailing volatility known at each bar, so targets are comparable across regimes."""
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(vol > 0, 1.0 / vol, np.nan)
        fwd = forward_returns(r1, k) * scale[..., None]
        mean = np.nan_to_num(np.nanmean(fwd[train_bars].reshape(-1, k), axis=0))

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).float().to(x.device)

        return cls(x, tensor(fwd), tensor(np.nan_to_num(r1 * scale)), tensor(mean))


def random_mask(shape: torch.Size, p_time: float, p_cell: float, gen: torch.Generator) -> torch.Tensor:
    """``(B, S, W, F)`` bool: whole time steps with probability ``p_time``, single cells with ``p_cell``."""
    b, s, w, f = shape
    time = torch.rand((b, s, w, 1), generator=gen) < p_time
    cell = torch.rand((b, s, w, f), generator=gen) < p_cell
    return time | cell


def last_unmasked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each cell's most recent unmasked value of the same feature earlier in the window (0 if none)."""
    w = x.shape[-2]
    steps = torch.arange(w, device=x.device).view(1, 1, w, 1).expand_as(x)
    idx = torch.where(mask, torch.full_like(steps, -1), steps).cummax(dim=-2).values
    filled = torch.gather(x, -2, idx.clamp(min=0))
    return torch.where(idx >= 0, filled, torch.zeros_like(x))


def _losses(
    encoder,
    heads,
    data: PretrainData,
    bars: torch.Tensor,
    window: int,
    cfg: EncoderConfig,
    gen: torch.Generator,
    with_baselines: bool = False,
) -> dict[str, torch.Tensor]:
    x = gather_windows(data.x, bars, window)
    mask = random_mask(x.shape, cfg.mask_time_prob, cfg.mask_feature_prob, gen).to(x.device)
    recon, forecast = heads(encoder.learned(x.masked_fill(mask, 0.0)))
    target = data.targets[bars]
    seen = torch.isfinite(target)
    tgt = torch.nan_to_num(target)

    def masked_mse(pred: torch.Tensor) -> torch.Tensor:
        return ((pred - x) ** 2)[mask].mean() if mask.any() else pred.sum() * 0.0

    def forecast_mse(pred: torch.Tensor, steps: slice = slice(None)) -> torch.Tensor:
        ok = seen[..., steps]
        return ((pred - tgt) ** 2)[..., steps][ok].mean() if ok.any() else pred.sum() * 0.0

    out = {"recon": masked_mse(recon), "forecast": forecast_mse(forecast)}
    out["loss"] = out["recon"] + cfg.forecast_weight * out["forecast"]
    if with_baselines:
        out["recon_last"] = masked_mse(last_unmasked(x, mask))
        out["recon_mean"] = masked_mse(torch.zeros_like(x))
        naive = {
            "last": data.last_return[bars][..., None].expand_as(tgt),
            "mean": data.target_mean.expand_as(tgt),
        }
        first = slice(0, 1)  # the next bar alone, where a planted signal lives
        out["forecast1"] = forecast_mse(forecast, first)
        for name, pred in naive.items():
            out[f"forecast_{name}"] = forecast_mse(pred)
            out[f"forecast1_{name}"] = forecast_mse(pred, first)
    return out


@torch.no_grad()
def validation_losses(
    encoder, heads, data: PretrainData, bars: np.ndarray, window: int, cfg: EncoderConfig, seed: int
) -> dict[str, float]:
    """Mean losses over ``bars`` with fixed masks (same every call), plus the naive baselines."""
    encoder.eval()
    heads.eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    bars_t = torch.as_tensor(bars, device=data.x.device)
    for i in range(0, len(bars_t), cfg.batch_bars):
        chunk = bars_t[i : i + cfg.batch_bars]
        for k, v in _losses(encoder, heads, data, chunk, window, cfg, gen, with_baselines=True).items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
    return {k: v / max(len(bars_t), 1) for k, v in sums.items()}


def pretrain(
    cfg: EncoderConfig,
    data: PretrainData,
    adjacency: torch.Tensor,
    train_bars: np.ndarray,
    val_bars: np.ndarray,
    window: int,
    seed: int,
) -> tuple[SharedEncoder, PretrainHeads, dict]:
    """Train encoder + heads on ``train_bars``; keep the epoch with the lowest validation loss."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = data.x.device
    encoder = SharedEncoder(cfg, window, data.x.shape[-1], adjacency).to(dev)
    heads = PretrainHeads(encoder.learned_dim, window, data.x.shape[-1], cfg.forecast_k).to(dev)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_t = torch.as_tensor(train_bars, device=dev)
    best, best_state, history, stale = None, None, [], 0
    for epoch in range(1, cfg.epochs + 1):
        encoder.train()
        heads.train()
        order = torch.randperm(len(train_t), generator=gen)[: cfg.max_bars_per_epoch].to(dev)
        total = 0.0
        for i in range(0, len(order), cfg.batch_bars):
            loss = _losses(encoder, heads, data, train_t[order[i : i + cfg.batch_bars]], window, cfg, gen)[
                "loss"
            ]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total += float(loss.detach()) * len(order[i : i + cfg.batch_bars])
        val = validation_losses(encoder, heads, data, val_bars, window, cfg, seed + 1)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(len(order), 1),
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        log.info("encoder epoch %d: train %.4f val %.4f", epoch, history[-1]["train_loss"], val["loss"])
        if best is None or val["loss"] < best["loss"] - 1e-6:
            best, stale = {**val, "epoch": epoch}, 0
            best_state = (
                {k: v.clone() for k, v in encoder.state_dict().items()},
                {k: v.clone() for k, v in heads.state_dict().items()},
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    encoder.load_state_dict(best_state[0])
    heads.load_state_dict(best_state[1])
    encoder.eval()
    heads.eval()
    return encoder, heads, {"best": best, "history": history}


@torch.inference_mode()
def embed(
    encoder: SharedEncoder,
    x: torch.Tensor,
    bars: np.ndarray,
    window: int,
    batch_bars: int,
    priors: torch.Tensor | None = None,
    learned_only: bool = False,
) -> torch.Tensor:
    """Embeddings ``(N, S, D)`` of every symbol of ``bars``; ``priors`` is the ``(T, S, 9)`` SL cache."""
    encoder.eval()
    bars_t = torch.as_tensor(bars, device=x.device)
    out = []
    for i in range(0, len(bars_t), batch_bars):
        chunk = bars_t[i : i + batch_bars]
        w = gather_windows(x, chunk, window)
        out.append(
            encoder.learned(w) if learned_only else encoder(w, None if priors is None else priors[chunk])
        )
    dim = encoder.learned_dim if learned_only else encoder.embed_dim
    return torch.cat(out) if out else torch.zeros(0, x.shape[1], dim, device=x.device)


def mse_summary(best: dict) -> dict[str, float]:
    """Validation losses of the kept epoch and the ratio to the better naive baseline (< 1: beats it)."""
    out = {f"val_{k}": float(v) for k, v in best.items()}
    for part in ("recon", "forecast", "forecast1"):
        naive = min(best[f"{part}_last"], best[f"{part}_mean"])
        out[f"val_{part}_vs_naive"] = float(best[part] / naive) if naive > 0 else float("nan")
    return out
