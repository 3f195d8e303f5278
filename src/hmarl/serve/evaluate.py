"""Evaluation of an existing model bundle on data: ``hmarl evaluate`` and the champion side of promotion.

The data is featurized with the pipeline's own code and the model's saved normalization
(:func:`hmarl.serve.inputs.featurize`; a pipeline feature store is renormalized, :func:`hmarl.serve.inputs.with_model_norm`).
The bundle's SL models and encoder then produce the probabilities and embeddings its agents read, computed
the way the pipeline fills its caches (:func:`hmarl.sl.train.bar_logits`, :func:`hmarl.encoders.pretrain.embed`,
float16 embeddings), and the walk-forward evaluation (:func:`hmarl.evaluation.walk_forward.evaluate_period`:
the policy and every baseline at every cost level) runs on the chosen bars. Data whose symbols, feature
list or regime features differ from the model's is refused with a :class:`DataError` naming the difference.

    hmarl evaluate --model models:/hmarl@champion --data data/canonical --out reports/eval
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmarl.agents.inputs import AgentTables
from hmarl.config import HmarlConfig
from hmarl.data.canonical import read_canonical
from hmarl.data.market import market_from_canonical
from hmarl.data.store import FeatureStore
from hmarl.encoders.pretrain import embed
from hmarl.env.market import MarketData
from hmarl.errors import DataError
from hmarl.evaluation.period import PeriodEvaluation
from hmarl.io import remove_leftovers, remove_path, replace_path, temp_sibling
from hmarl.serve.bundle import Bundle, load_bundle, resolve_model
from hmarl.serve.inputs import featurize, with_model_norm
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.inputs import model_inputs
from hmarl.sl.train import bar_logits

OUTPUT_FILES = ("metrics.json", "evaluation.json", "report.html", "report.md", "period")


@dataclass
class ModelData:
    """A dataset as one model sees it: every table indexed by the store's bars."""

    store: FeatureStore  # normalized with the model fold's train statistics (fold 0)
    market: MarketData
    tables: AgentTables
    sl_probs: np.ndarray  # (T, S, 9) float32; NaN outside the computed bars
    bars: tuple[int, int]  # [lo, hi): the bars the SL probabilities (and embeddings) were computed for


def first_bar(bundle: Bundle) -> int:
    """The first bar whose feature window lies wholly past the feature warm-up."""
    return bundle.cfg.features.warmup_bars + bundle.window - 1


def evaluation_config(bundle: Bundle, cfg: HmarlConfig | None) -> HmarlConfig:
    """The model's own params (env, costs, agents: how it trades) with the caller's evaluation settings
    (walk_forward cost levels / stress windows, tracking), so two models are judged the same way. Without
    the caller's params nothing is tracked (no MLflow store appears in the working folder)."""
    if cfg is None:
        return bundle.cfg.model_copy(
            update={"tracking": bundle.cfg.tracking.model_copy(update={"enabled": False})}
        )
    return bundle.cfg.model_copy(update={"walk_forward": cfg.walk_forward, "tracking": cfg.tracking})


@torch.no_grad()
def model_data(
    bundle: Bundle, store: FeatureStore, bars: tuple[int, int] | None = None, device: str = "cpu"
) -> ModelData:
    """SL probabilities (and embeddings) of ``bars`` (default: every bar from :func:`first_bar` on) from the
    bundle's models; ``store`` must hold the model's normalization (:func:`hmarl.serve.inputs.with_model_norm`)."""
    t, s = store.num_bars, store.num_symbols
    lo, hi = bars if bars is not None else (first_bar(bundle), t)
    if not first_bar(bundle) <= lo < hi <= t:
        raise DataError(
            f"bars [{lo}, {hi}): outside the {t} bars of the data past the feature warm-up "
            f"(first full window at bar {first_bar(bundle)})"
        )
    cfg, window, idx = bundle.cfg, bundle.window, np.arange(lo, hi)
    x = model_inputs(store, 0).to(device)
    sl = np.full((t, s, 9), np.nan, dtype=np.float32)
    sl[lo:hi] = torch.cat(
        [
            calibrated_probs(bar_logits(m.to(device), x, idx, window, cfg.sl.predict_batch), temp)
            for m, temp in bundle.sl_models
        ],
        -1,
    ).cpu()
    if bundle.encoder is not None:
        # float16 like the pipeline's embeddings.npy, so the agents read what they were trained on
        emb = np.full((t, s, bundle.encoder.embed_dim), np.nan, dtype=np.float16)
        priors = torch.from_numpy(sl).to(device)
        enc = bundle.encoder.to(device)
        emb[lo:hi] = embed(enc, x, idx, window, cfg.encoder.embed_batch_bars, priors).cpu().numpy()
        tables = AgentTables(emb, sl, None, torch.device(device))
    else:  # the symbol agents carry their fine-tuned encoder: they read feature windows
        tables = AgentTables(x, sl, window, torch.device(device))
    market = MarketData.from_store(store, cfg.env, device)
    return ModelData(store, market, tables, sl, (lo, hi))


def evaluate_bundle(
    bundle: Bundle,
    store: FeatureStore,
    periods: list[tuple[str, tuple[int, int]]],
    cfg: HmarlConfig | None = None,
    where: str = "data",
) -> list[PeriodEvaluation]:
    """The bundle evaluated on each ``(label, bars)`` of ``store`` (a feature store of any data, e.g. the
    pipeline's: it is checked against the model and renormalized with the model's statistics)."""
    from hmarl.evaluation.walk_forward import evaluate_period

    store = with_model_norm(bundle, store, where)
    lo, hi = min(b[0] for _, b in periods), max(b[1] for _, b in periods)
    data = model_data(bundle, store, (lo, hi))
    ecfg = evaluation_config(bundle, cfg)
    info = {
        "data": where,
        "model_fold": bundle.fold,
        "inputs": "recomputed with the model's SL models/encoder",
    }
    return [
        evaluate_period(ecfg, data.market, data.tables, bundle.symbol_agent, bundle.master, bars, label, info)
        for label, bars in periods
    ]


def evaluate_model(
    model: str | Path, data: str | Path, out: str | Path, cfg: HmarlConfig | None = None
) -> dict[str, dict[str, float]]:
    """``hmarl evaluate``: ``model`` (bundle folder or ``models:/name@alias``) on a canonical bar folder,
    every bar past the feature warm-up; writes ``out``/metrics.json, evaluation.json, report.html,
    report.md and the evaluated period (``out``/period). Nothing is written unless all of it succeeds."""
    from hmarl.evaluation.aggregate import aggregate, mlflow_trial_sharpes, write_evaluation

    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(resolve_model(model, cfg, Path(tmp)))
    market = market_from_canonical(read_canonical(data), source=str(data))
    store = featurize(bundle, market, where=str(data))
    label = Path(str(data).rstrip("/")).name or "data"
    ecfg = evaluation_config(bundle, cfg)
    (period,) = evaluate_bundle(bundle, store, [(label, (first_bar(bundle), store.num_bars))], cfg)
    notes = [
        f"model {model} (its fold {bundle.fold}) evaluated on {data}: bars {period.bars[0]}.."
        f"{period.bars[1] - 1} ({period.dates[0]} .. "
        f"{period.dates[-1]}), features normalized with the model's train statistics",
    ]
    agg = aggregate([period], ecfg, mlflow_trial_sharpes(ecfg, notes))
    remove_leftovers(Path(out))  # a killed evaluation's staging folder
    staged = temp_sibling(Path(out))
    try:
        doc = write_evaluation(staged, agg, title=f"Evaluation of {model} on {label}", notes=notes)
        period.save(staged / "period")
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:
            replace_path(staged / name, Path(out) / name)
    finally:
        remove_path(staged)
    return doc
