"""Training the SL classifiers and building the walk-forward probability cache (see :mod:`hmarl.sl.cache`).

Every model trains on (bar, symbol) pairs of its fit ranges, pooled over symbols, with early stopping and
temperature scaling on the fold's validation bars. Cross-fitting models of the first fold select on the
same validation bars, so the blocks they predict are neither trained nor selected on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmarl.config import HmarlConfig
from hmarl.data.splits import Fold, folds_for
from hmarl.data.store import FeatureStore
from hmarl.data.windows import gather_pair_windows, gather_windows
from hmarl.errors import DataError
from hmarl.runtime import resolve_device
from hmarl.sl.cache import CHANNELS, NONE, OUTER, SLCache, inner_blocks, inner_fit_ranges, walk_forward_plan
from hmarl.sl.calibration import calibrated_probs, fit_temperature
from hmarl.sl.inputs import bars_to_ranges, labelled_pairs, model_inputs, ranges_to_bars
from hmarl.sl.labels import store_labels
from hmarl.sl.metrics import base_rate, classification_metrics
from hmarl.sl.models import MODEL_NAMES, MODEL_VERSIONS, build_model, predict_logits, save_checkpoint
from hmarl.sl.params import SLConfig

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    bars: torch.Tensor
    symbols: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, labels: np.ndarray, bars: np.ndarray, window: int, device: torch.device) -> Pairs:
        b, s = labelled_pairs(labels, bars, window)
        y = labels[b, s]
        return cls(*(torch.as_tensor(a, device=device) for a in (b, s, y)))

    def __len__(self) -> int:
        return len(self.bars)


@dataclass
class FitResult:
    model: nn.Module
    temperature: float
    best_epoch: int
    epochs_run: int
    val_loss: float
    prior: np.ndarray  # class frequencies of the training labels (the base-rate predictor)


@torch.inference_mode()
def pair_logits(model: nn.Module, x: torch.Tensor, pairs: Pairs, window: int, batch: int) -> torch.Tensor:
    out = [
        predict_logits(
            model, gather_pair_windows(x, pairs.bars[i : i + batch], pairs.symbols[i : i + batch], window)
        )
        for i in range(0, len(pairs), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, 3, device=x.device)


@torch.inference_mode()
def bar_logits(model: nn.Module, x: torch.Tensor, bars: np.ndarray, window: int, batch: int) -> torch.Tensor:
    """Logits ``(N, S, 3)`` for every symbol of ``bars`` (one batched pass per chunk of bars)."""
    n_sym = x.shape[1]
    step = max(1, batch // n_sym)
    bars_t = torch.as_tensor(bars, device=x.device)
    out = []
    for i in range(0, len(bars_t), step):
        w = gather_windows(x, bars_t[i : i + step], window)
        out.append(predict_logits(model, w.reshape(-1, *w.shape[2:])).reshape(w.shape[0], n_sym, -1))
    return torch.cat(out) if out else torch.zeros(0, n_sym, 3, device=x.device)


def fit_classifier(
    name: str, sl: SLConfig, x: torch.Tensor, train: Pairs, val: Pairs, window: int, seed: int
) -> FitResult:
    """Adam on cross-entropy, early stopping on validation loss, then temperature scaling."""
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"sl: {name} has {len(train)} train and {len(val)} validation samples; need both")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(name, getattr(sl, name), window, x.shape[-1]).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=sl.lr, weight_decay=sl.weight_decay)
    best_loss, best_state, best_epoch, stale, epoch = float("inf"), None, 0, 0, 0
    for epoch in range(1, sl.max_epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=gen)[: sl.max_samples_per_epoch].to(x.device)
        for i in range(0, len(order), sl.batch_size):
            idx = order[i : i + sl.batch_size]
            logits = model(gather_pair_windows(x, train.bars[idx], train.symbols[idx], window))
            loss = F.cross_entropy(logits, train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_loss = float(F.cross_entropy(pair_logits(model, x, val, window, sl.predict_batch), val.labels))
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= sl.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    temperature = 1.0
    if sl.calibrate:
        temperature = fit_temperature(pair_logits(model, x, val, window, sl.predict_batch), val.labels)
    prior = base_rate(train.labels.cpu().numpy())
    return FitResult(model, temperature, best_epoch, epoch, best_loss, prior)


def _metric_block(probs: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> dict:
    """Metrics over the labelled pairs: ``probs`` (N, S, 3), ``labels`` (N, S), ``prior`` (3,) or (N, 1, 3)."""
    ok = labels >= 0
    prior = np.broadcast_to(prior, probs.shape)
    return classification_metrics(probs[ok], labels[ok], prior[ok])


def _calibrated(res: FitResult, x: torch.Tensor, bars: np.ndarray, window: int, batch: int) -> np.ndarray:
    return calibrated_probs(bar_logits(res.model, x, bars, window, batch), res.temperature).cpu().numpy()


def _save(res: FitResult, name: str, path: Path, sl: SLConfig, **meta) -> dict:
    """Write the checkpoint; return its manifest entry."""
    save_checkpoint(
        path,
        res.model,
        model=name,
        version=MODEL_VERSIONS[name],
        hparams=getattr(sl, name).model_dump(),
        temperature=res.temperature,
        **meta,
    )
    return {
        "temperature": res.temperature,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "val_loss": res.val_loss,
    }


@dataclass
class _CacheArrays:
    """What the fits fill in: the calibrated probabilities, the producing model's base rate (for scoring),
    which (fold, split) produced each bar, and the per-model metrics."""

    probs: np.ndarray  # (T, S, C)
    priors: np.ndarray  # (T, 1, C)
    source_fold: np.ndarray
    source_split: np.ndarray
    metrics: dict

    @classmethod
    def empty(cls, t: int, s: int) -> _CacheArrays:
        return cls(
            np.full((t, s, len(CHANNELS)), np.nan, dtype=np.float32),
            np.full((t, 1, len(CHANNELS)), np.nan),
            np.full(t, NONE, dtype=np.int16),
            np.full(t, OUTER, dtype=np.int16),
            {name: {} for name in MODEL_NAMES},
        )


def build_sl_cache(store: FeatureStore, cfg: HmarlConfig, checkpoint_dir: Path) -> tuple[SLCache, dict]:
    """Train every (fold, split, model), fill the walk-forward cache, and score it."""
    sl, window = cfg.sl, cfg.features.window
    device = resolve_device(cfg.device)
    t, s = store.num_bars, store.num_symbols
    folds = folds_for(cfg, t)
    gap = cfg.features.label_horizon + cfg.splits.embargo_bars
    labels = store_labels(store, cfg.features.label_horizon, sl)
    blocks = inner_blocks(folds[0], sl.inner_folds, gap)
    plan = walk_forward_plan(folds, blocks)

    out, fits = _CacheArrays.empty(t, s), []
    for fold in folds:
        x = model_inputs(store, fold.index).to(device)
        val = Pairs.of(labels, fold.bars("val"), window, device)
        jobs = [(j, inner_fit_ranges(fold, b, gap)) for j, b in enumerate(blocks)] if fold.index == 0 else []
        for split, ranges in [*jobs, (OUTER, [fold.train])]:
            train = Pairs.of(labels, ranges_to_bars(ranges), window, device)
            predicts = [(max(a, window - 1), b) for k, j, a, b in plan if k == fold.index and j == split]
            fits.append(
                _fit_split(store, cfg, checkpoint_dir, fold, split, x, train, val, labels, predicts, out)
            )

    oof_bars = np.arange(max(blocks[0][0], window - 1), blocks[-1][1])
    test_bars = np.concatenate([f.bars("test") for f in folds])
    for m, name in enumerate(MODEL_NAMES):
        cols = slice(3 * m, 3 * m + 3)
        for part, bars in (("oof", oof_bars), ("test", test_bars)):
            out.metrics[name][part] = _metric_block(
                out.probs[bars, :, cols], labels[bars], out.priors[bars, :, cols]
            )
    manifest = _manifest(store, cfg, folds, blocks, fits, gap)
    return SLCache(out.probs, out.source_fold, out.source_split, manifest), out.metrics


def _fit_split(
    store: FeatureStore,
    cfg: HmarlConfig,
    checkpoint_dir: Path,
    fold: Fold,
    split: int,
    x: torch.Tensor,
    train: Pairs,
    val: Pairs,
    labels: np.ndarray,
    predicts: list[tuple[int, int]],
    out: _CacheArrays,
) -> dict:
    """Fit every model of one (fold, split), save its checkpoint, fill the bars it predicts (and, for the
    outer split, its val / test metrics); returns the manifest entry of the fit."""
    sl, window = cfg.sl, cfg.features.window
    fit_ranges = bars_to_ranges(train.bars.cpu().numpy())  # the bars whose labels were used
    tag = f"fold_{fold.index}" + ("" if split == OUTER else f"_inner_{split}")
    entry = {
        "fold": fold.index,
        "split": split,
        "fit_ranges": fit_ranges,
        "select_range": list(fold.val),
        "predicts": [list(p) for p in predicts],
        "samples": len(train),
        "models": {},
    }
    for m, name in enumerate(MODEL_NAMES):
        res = fit_classifier(
            name, sl, x, train, val, window, cfg.seed + 1000 * fold.index + 10 * (split + 1) + m
        )
        ckpt = Path(name) / f"{tag}.pt"
        saved = _save(res, name, checkpoint_dir / ckpt, sl, window=window, feature_names=store.feature_names,
                      fold=fold.index, split=split, fit_ranges=fit_ranges,
                      fingerprint=store.meta.get("fingerprint"))  # fmt: skip
        entry["models"][name] = {"checkpoint": f"checkpoints/{ckpt}", **saved}
        cols = slice(3 * m, 3 * m + 3)
        for a, b in predicts:
            out.probs[a:b, :, cols] = _calibrated(res, x, np.arange(a, b), window, sl.predict_batch)
            out.priors[a:b, :, cols] = res.prior
            out.source_fold[a:b], out.source_split[a:b] = fold.index, split
        if split == OUTER:
            out.metrics[name][f"fold_{fold.index}"] = {
                part: _metric_block(
                    _calibrated(res, x, fold.bars(part), window, sl.predict_batch),
                    labels[fold.bars(part)],
                    res.prior,
                )
                for part in ("val", "test")
            }
        log.info("sl %s %s: best epoch %d/%d, val loss %.4f, T=%.2f", name, tag, res.best_epoch,
                 res.epochs_run, res.val_loss, res.temperature)  # fmt: skip
    return entry


def _manifest(
    store: FeatureStore, cfg: HmarlConfig, folds: list[Fold], blocks: list, fits: list[dict], gap: int
) -> dict:
    sl = cfg.sl
    return {
        "channels": list(CHANNELS),
        "models": {
            n: {"version": MODEL_VERSIONS[n], "hparams": getattr(sl, n).model_dump()} for n in MODEL_NAMES
        },
        "folds": [f.to_dict() for f in folds],
        "inner_blocks": [list(b) for b in blocks],
        "fits": fits,
        "purge_gap": gap,
        "label_horizon": cfg.features.label_horizon,
        "thresholds": {
            "down": sl.down_threshold,
            "up": sl.up_threshold,
            "unit": sl.threshold_unit,
            "vol_window": sl.vol_window,
        },
        "window": cfg.features.window,
        "fingerprint": store.meta.get("fingerprint"),
        "feature_names": store.feature_names,
        "symbols": store.symbols,
        "seed": cfg.seed,
    }


def summary_metrics(metrics: dict) -> dict[str, float]:
    """Flat metrics for DVC / MLflow: pooled walk-forward test bars and first-fold OOF bars per model."""
    out = {}
    for name, by_part in metrics.items():
        for part in ("test", "oof"):
            for key, value in by_part[part].items():
                out[f"{name}_{part}_{key}"] = float(value)
    return out
