"""Per-fold encoder pretraining, the walk-forward embedding cache, probes and attribution.

Fold ``k``'s encoder is pretrained on fold ``k``'s train bars only (its forecast targets never reach past
the bars an SL label of the train range would see). With ``encoder.refit_every = n > 1`` only every n-th
fold pretrains one; fold ``k`` reuses fold ``k - k % n``'s encoder (its manifest entry names that checkpoint
and its train/validation ranges, which precede fold ``k``'s test bars), so long walk-forwards pretrain once. The embedding cache, like the SL cache, is one
walk-forward array: bars up to the first fold's test end are embedded by the first fold's encoder, fold
``k``'s test bars by fold ``k``'s encoder, so no test bar is embedded by an encoder that trained on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from hmarl.config import HmarlConfig
from hmarl.data.splits import Fold, folds_for
from hmarl.data.store import FeatureStore
from hmarl.data.windows import gather_pair_windows
from hmarl.encoders.attribution import gradient_x_input, save_attribution_plot
from hmarl.encoders.branches import correlation_adjacency
from hmarl.encoders.model import ENCODER_VERSION, save_encoder
from hmarl.encoders.pretrain import PretrainData, embed, mse_summary, one_bar_returns, pretrain
from hmarl.encoders.probes import probe_metrics
from hmarl.io import write_json
from hmarl.runtime import resolve_device
from hmarl.sl.inputs import bars_to_ranges, model_inputs
from hmarl.sl.labels import store_labels, trailing_volatility

log = logging.getLogger(__name__)


def pretrain_bars(fold: Fold, part: str, window: int, horizon: int, forecast_k: int) -> np.ndarray:
    """Bars of ``part`` whose window fits and whose next-k targets stay within ``part``'s label reach."""
    start, end = getattr(fold, part)
    return np.arange(max(start, window - 1), min(end, end + horizon - forecast_k))


def embedding_plan(folds: list[Fold], window: int) -> list[tuple[int, int, int]]:
    """``(fold, start, end)``: which fold's encoder embeds which bars."""
    return [(0, window - 1, folds[0].test[1])] + [(f.index, f.test[0], f.test[1]) for f in folds[1:]]


def _probe_set(bars: np.ndarray, n_symbols: int, max_samples: int, seed: int) -> np.ndarray:
    """A random subset of ``bars`` holding about ``max_samples`` (bar, symbol) pairs, sorted."""
    n = max(1, min(len(bars), max_samples // n_symbols))
    return np.sort(np.random.default_rng(seed).choice(bars, n, replace=False))


def _probes(encoder, x, priors, labels, fold: Fold, cfg: HmarlConfig, seed: int) -> dict[str, float]:
    """Probe of next-bar direction: learned embedding, embedding with SL priors, and the raw window."""
    enc, window = cfg.encoder, cfg.features.window
    sets = {}
    for part in ("train", "val", "test"):
        bars = fold.bars(part)
        chosen = _probe_set(bars[bars >= window - 1], x.shape[1], enc.probe_max_samples, seed)
        z = embed(encoder, x, chosen, window, enc.embed_batch_bars, priors)
        b, s = np.nonzero(labels[chosen] >= 0)
        raw = gather_pair_windows(x, torch.as_tensor(chosen[b]), torch.as_tensor(s), window).flatten(1)
        sets[part] = {
            "embedding": z[b, s, : encoder.learned_dim],
            "embedding_priors": z[b, s],
            "raw": raw,
            "labels": labels[chosen][b, s],
        }
    views = ["embedding", "raw"] + (["embedding_priors"] if encoder.priors else [])
    out = {}
    for view in views:
        train, val, test = ((sets[p][view], sets[p]["labels"]) for p in ("train", "val", "test"))
        m = probe_metrics(train, val, test, enc.probe_l2)
        out.update({f"probe_{view}_{k}": v for k, v in m.items()})
    return out


def _save_attribution(out: Path, matrix: np.ndarray, feature_names: list[str]) -> str:
    """attribution.png + attribution.json from the ``(window, F)`` matrix; returns the top feature."""
    save_attribution_plot(out / "attribution.png", matrix, feature_names)
    per_feature = matrix.sum(0)
    window = matrix.shape[0]
    write_json(
        out / "attribution.json",
        {
            "method": "mean |gradient x input| of the next-bar return forecast, test bars of every fold",
            "feature_names": feature_names,
            "per_feature": dict(zip(feature_names, per_feature.tolist(), strict=True)),
            "per_lag": {str(window - 1 - i): float(v) for i, v in enumerate(matrix.sum(1))},
            "matrix": matrix.tolist(),
        },
    )
    return feature_names[int(per_feature.argmax())]


def _fit_fold(store: FeatureStore, cfg: HmarlConfig, fold: Fold, x, r1, vol, seed: int, out: Path):
    """Pretrain fold ``fold``'s encoder on its train bars (validation bars select the epoch) and save it."""
    enc, window, horizon = cfg.encoder, cfg.features.window, cfg.features.label_horizon
    train_bars = pretrain_bars(fold, "train", window, horizon, enc.forecast_k)
    val_bars = pretrain_bars(fold, "val", window, horizon, enc.forecast_k)
    adjacency = correlation_adjacency(r1[fold.train[0] : fold.train[1]], enc.graph_top_k)
    data = PretrainData.build(x, r1, vol, enc.forecast_k, train_bars)
    encoder, heads, info = pretrain(enc, data, adjacency, train_bars, val_bars, window, seed)
    fit_ranges = bars_to_ranges(train_bars)
    ckpt = Path("checkpoints") / "encoder" / f"fold_{fold.index}.pt"
    save_encoder(
        out / ckpt,
        encoder,
        heads,
        hparams=enc.model_dump(),
        window=window,
        feature_names=store.feature_names,
        symbols=store.symbols,
        fold=fold.index,
        fit_ranges=fit_ranges,
        fingerprint=store.meta.get("fingerprint"),
        vol_window=cfg.sl.vol_window,
    )
    return encoder, heads, info, fit_ranges, ckpt, val_bars


def build_encoders(
    store: FeatureStore, cfg: HmarlConfig, priors: np.ndarray | None, out: Path
) -> tuple[dict, dict]:
    """Pretrain an encoder every ``encoder.refit_every`` folds into ``out``; returns (manifest, metrics)."""
    enc, window, horizon = cfg.encoder, cfg.features.window, cfg.features.label_horizon
    device = resolve_device(cfg.device)
    t, s = store.num_bars, store.num_symbols
    folds = folds_for(cfg, t)
    labels = store_labels(store, horizon, cfg.sl)
    close, tradable = np.asarray(store.price("close")), np.asarray(store.tradable)
    r1 = one_bar_returns(close, tradable)
    vol = trailing_volatility(close, tradable, cfg.sl.vol_window)
    priors_t = None if priors is None else torch.from_numpy(np.array(priors, dtype=np.float32)).to(device)

    emb = np.lib.format.open_memmap(
        out / "embeddings.npy", mode="w+", dtype=np.float16, shape=(t, s, enc.embed_dim)
    )
    emb[:] = np.nan
    source_fold = np.full(t, -1, dtype=np.int16)
    plan = embedding_plan(folds, window)
    fits, metrics, attributions = [], {}, []
    fitted = None  # (encoder, heads, info, fit_ranges, ckpt, val_bars) of the latest refit
    for fold in folds:
        seed = cfg.seed + 7919 * (fold.index + 1)
        x = model_inputs(store, fold.index).to(device)
        if fold.index % enc.refit_every == 0:
            fitted = _fit_fold(store, cfg, fold, x, r1, vol, seed, out)
        encoder, heads, info, fit_ranges, ckpt, val_bars = fitted
        embeds = [(a, b) for k, a, b in plan if k == fold.index]
        for a, b in embeds:
            for i in range(a, b, 4096):  # bounded memory for long histories
                bars = np.arange(i, min(b, i + 4096))
                emb[bars] = embed(encoder, x, bars, window, enc.embed_batch_bars, priors_t).cpu().numpy()
            source_fold[a:b] = fold.index
        fm = mse_summary(info["best"])
        fm["best_epoch"] = float(info["best"]["epoch"])
        fm.update(_probes(encoder, x, priors_t, labels, fold, cfg, seed))
        metrics[f"fold_{fold.index}"] = fm
        test = fold.bars("test")
        att_bars = np.sort(
            np.random.default_rng(seed).choice(test, min(len(test), enc.attribution_bars), replace=False)
        )
        attributions.append(gradient_x_input(encoder, heads, x, att_bars, window))
        fits.append(
            {
                "fold": fold.index,
                "checkpoint": str(ckpt),
                "trained_on_fold": fold.index - fold.index % enc.refit_every,
                "fit_ranges": fit_ranges,
                "select_range": [int(val_bars[0]), int(val_bars[-1]) + 1] if len(val_bars) else [],
                "embeds": [list(e) for e in embeds],
                "history": info["history"],
            }
        )
        log.info("encoder fold %d: %s", fold.index, {k: round(v, 4) for k, v in fm.items()})
    emb.flush()
    del emb
    np.save(out / "source_fold.npy", source_fold)

    top_feature = _save_attribution(out, np.mean(attributions, axis=0), store.feature_names)
    keys = metrics["fold_0"].keys()
    metrics["mean"] = {k: float(np.mean([metrics[f"fold_{f.index}"][k] for f in folds])) for k in keys}
    metrics["top_feature"] = top_feature
    return _manifest(store, cfg, folds, fits), metrics


def _manifest(store: FeatureStore, cfg: HmarlConfig, folds: list[Fold], fits: list[dict]) -> dict:
    enc = cfg.encoder
    return {
        "version": ENCODER_VERSION,
        "embed_dim": enc.embed_dim,
        "priors": {
            "appended": enc.append_sl_priors,
            "dims": [enc.embed_dim - 9, enc.embed_dim] if enc.append_sl_priors else [],
        },
        "branches": [n for n, on in enc.branches.model_dump().items() if on],
        "hparams": enc.model_dump(),
        "folds": [f.to_dict() for f in folds],
        "fits": fits,
        "window": cfg.features.window,
        "fingerprint": store.meta.get("fingerprint"),
        "feature_names": store.feature_names,
        "symbols": store.symbols,
        "seed": cfg.seed,
    }
