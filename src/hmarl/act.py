"""``hmarl act``: what a trading desk runs every bar. From a model bundle and the latest bars, the target
order of every symbol: the master's directive and each symbol agent's action, size and allowed actions.

A bundle is a folder holding the pipeline's outputs under their step output names::

    features/   meta.json + norm.npz of the feature store (feature list, symbols, folds, normalization)
    sl_cache/   manifest.json + checkpoints/<model>/fold_<k>.pt (the SL direction classifiers)
    encoder/    manifest.json + the fold's encoder checkpoint
    symbols/    agent.pt (train_symbols)        master/   master.pt (train_master)

or a registry URI ``models:/<name>@<alias>`` whose artifact is such a folder. ``--data`` is a canonical bar
folder (the ingest step's output format) with enough history for the feature windows (``features.window``
bars past the ``features.warmup_bars``). Features of the history are computed with the pipeline's own code
and normalized with the model fold's train statistics; the decision is for the newest bar, for a flat
account holding ``env.initial_cash`` (positions are not an input yet). Data whose symbols, feature list or
regime features differ from the model's is refused, naming the difference.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import MasterAgent, benchmark_table
from hmarl.agents.saved import load_agent
from hmarl.agents.saved_master import load_master
from hmarl.agents.symbol import SymbolAgent
from hmarl.config import HmarlConfig, build_config
from hmarl.data.canonical import read_canonical
from hmarl.data.features import FEATURE_NAMES, compute_features
from hmarl.data.regime import REGIME_NAMES, compute_regime, exogenous_regime
from hmarl.encoders.model import load_encoder
from hmarl.env.actions import ACTION_NAMES, decode_directive, order_table
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import DataError
from hmarl.io import atomic_path, read_json
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.inputs import CLIP, feature_mismatch
from hmarl.sl.models import load_checkpoint
from hmarl.steps.features import Market, market_from_canonical

PARTS = ("features", "sl_cache", "encoder", "symbols", "master")
ORDER_FIELDS = ("symbol", "action", "probability", "buy_notional", "sell_fraction", "allowed", "directive")


@dataclass
class Bundle:
    cfg: HmarlConfig  # the params the master was trained with
    symbols: list[str]
    feature_names: list[str]
    regime_names: list[str]
    fold: int
    norm_mean: np.ndarray  # (F,)
    norm_std: np.ndarray
    sl_models: list[tuple[torch.nn.Module, float]]  # (classifier, temperature) in SL cache channel order
    encoder: torch.nn.Module | None  # None: the symbol agents run their own fine-tuned encoder
    symbol_agent: SymbolAgent
    master: MasterAgent

    @property
    def window(self) -> int:
        return self.cfg.features.window


def resolve_model(model: str | Path, cfg: HmarlConfig | None, workdir: Path) -> Path:
    """A bundle folder, or a registry URI downloaded into ``workdir``."""
    if str(model).startswith("models:/"):
        from hmarl.tracking.registry import ModelRegistry

        tracking = (cfg or build_config({})).tracking
        return ModelRegistry(tracking).download(str(model), workdir)
    return Path(model)


def load_bundle(folder: str | Path) -> Bundle:
    root = Path(folder)
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise DataError(f"{root}: not a model bundle, missing {missing} (need {list(PARTS)})")
    meta = read_json(root / "features" / "meta.json")
    norm = np.load(root / "features" / "norm.npz")
    master, master_meta = load_master(root / "master" / "master.pt")
    symbol_agent, agent_meta = load_agent(root / "symbols" / "agent.pt")
    cfg = build_config(read_json(root / "master" / "manifest.json")["config"])
    fold = int(master_meta["fold"])
    for name, m in (("symbols", agent_meta), ("master", master_meta)):
        if m["symbols"] != meta["symbols"] or m["fingerprint"] != meta["fingerprint"]:
            raise DataError(f"{root}/{name}: trained on other data than {root}/features describes")
    sl_manifest = read_json(root / "sl_cache" / "manifest.json")
    sl_models = []
    # in the cache's channel order (mlp_down, mlp_flat, mlp_up, lstm_down, ...), as the agents saw them
    for name in dict.fromkeys(c.rsplit("_", 1)[0] for c in sl_manifest["channels"]):
        model, info = load_checkpoint(
            root / "sl_cache" / "checkpoints" / name / f"fold_{fold}.pt", meta["feature_names"]
        )
        sl_models.append((model, float(info.get("temperature", 1.0))))
    encoder = None
    if agent_meta.get("encoder") is None:
        fits = read_json(root / "encoder" / "manifest.json")["fits"]
        fit = next((f for f in fits if f["fold"] == fold), None)
        if fit is None:
            raise DataError(f"{root}/encoder: no encoder checkpoint for fold {fold}")
        encoder, _, _ = load_encoder(
            root / "encoder" / fit["checkpoint"], meta["feature_names"], meta["symbols"]
        )
    return Bundle(
        cfg,
        list(meta["symbols"]),
        list(meta["feature_names"]),
        list(meta["regime_names"]),
        fold,
        np.asarray(norm["mean"])[fold],
        np.asarray(norm["std"])[fold],
        sl_models,
        encoder,
        symbol_agent,
        master,
    )


# --------------------------------------------------------------------------- checks and inputs
def check_data(bundle: Bundle, market: Market, regime_names: list[str], where: str) -> None:
    if market.symbols != bundle.symbols:
        missing = [s for s in bundle.symbols if s not in market.symbols]
        extra = [s for s in market.symbols if s not in bundle.symbols]
        what = f"missing {missing}, unexpected {extra}" if missing or extra else "same symbols, another order"
        raise DataError(f"{where}: symbols differ from the model's ({what})")
    if list(FEATURE_NAMES) != bundle.feature_names:
        raise DataError(
            f"{where}: {feature_mismatch(list(FEATURE_NAMES), bundle.feature_names, 'data', 'model')}"
        )
    if regime_names != bundle.regime_names:
        raise DataError(
            f"{where}: regime features {regime_names} differ from the model's {bundle.regime_names} "
            "(exogenous series?)"
        )
    need = bundle.cfg.features.warmup_bars + bundle.window
    if len(market.timestamps) < need:
        raise DataError(
            f"{where}: {len(market.timestamps)} bars; the model needs at least {need} (warm-up + window)"
        )


@dataclass
class LatestInputs:
    windows: torch.Tensor  # (S, W, F) normalized feature windows ending at the newest bar
    market: MarketData  # the history plus one placeholder bar (never observed: nothing is filled)
    timestamp: pd.Timestamp


def latest_inputs(bundle: Bundle, market: Market, where: str = "data") -> LatestInputs:
    regime = compute_regime(market.ohlcv, market.tradable, market.benchmark, market.bars_per_year)
    names = list(REGIME_NAMES)
    if market.exogenous:
        exo_names, exo = exogenous_regime(market.exogenous)
        regime, names = np.concatenate([regime, exo], axis=1), names + exo_names
    check_data(bundle, market, names, where)
    w = bundle.window
    # over the whole history given: EMA-type features depend on where they start, as in the pipeline
    features = compute_features(market.ohlcv, market.tradable)[-w:]
    usable = market.tradable[-w:] & np.isfinite(features).all(-1)
    z = np.where(usable[..., None], (features - bundle.norm_mean) / bundle.norm_std, 0.0)
    z = np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP).astype(np.float32)
    regime = np.where(np.isfinite(regime), regime, 0.0).astype(np.float32)
    pad = lambda a: np.concatenate([a, a[-1:]])  # noqa: E731 (the placeholder bar repeats the newest)
    data = MarketData.from_arrays(
        open_=pad(market.ohlcv[..., 0]),
        high=pad(market.ohlcv[..., 1]),
        low=pad(market.ohlcv[..., 2]),
        close=pad(market.ohlcv[..., 3]),
        volume=pad(market.ohlcv[..., 4]),
        tradable=pad(market.tradable),
        benchmark=pad(market.benchmark),
        regime=pad(regime),
        bars_per_year=market.bars_per_year,
        symbols=market.symbols,
        timestamps=np.concatenate([market.timestamps, market.timestamps[-1:] + 1]),
        cfg=bundle.cfg.env,
    )
    stamp = pd.Timestamp(int(market.timestamps[-1]), tz="UTC")
    return LatestInputs(torch.from_numpy(z).transpose(0, 1).contiguous(), data, stamp)


# --------------------------------------------------------------------------- the decision
@torch.no_grad()
def decide(bundle: Bundle, inputs: LatestInputs) -> list[dict]:
    """One full decision for the newest bar: SL models, encoder, master, symbol agents (all greedy)."""
    cfg, windows = bundle.cfg, inputs.windows
    t = inputs.market.num_bars - 2  # the newest real bar
    sl = torch.cat([calibrated_probs(m(windows), temp) for m, temp in bundle.sl_models], -1).unsqueeze(0)
    if bundle.encoder is not None:
        emb = bundle.encoder(windows.unsqueeze(0), sl)
        tables = AgentTables(emb, sl, None, torch.device("cpu"), market_offset=t, sl_offset=t)
    else:
        tables = AgentTables(
            windows.transpose(0, 1), sl, bundle.window, torch.device("cpu"), t - bundle.window + 1, t
        )
    env = MarketEnv(inputs.market, cfg.env, cfg.reward, num_envs=1, bar_range=(t, t + 2))
    obs = env.reset(seed=0)  # the episode starts at the newest bar: the master is due
    bench = benchmark_table(inputs.market.benchmark, cfg.env.master.interval)
    h = Hierarchy(bundle.symbol_agent, tables, bundle.master, bench, symbol_greedy=True)
    directive = h.director(greedy=True)(obs)
    obs = env.set_directive(directive)
    logp, _ = h.symbol_outputs(obs)
    action = logp.argmax(-1)[0]
    prob = logp[0].exp().gather(-1, action.unsqueeze(-1)).squeeze(-1)
    risk, cap, mode = decode_directive(cfg.env, int(directive[0]))
    m = cfg.env.master
    label = {
        "risk_multiplier": m.risk_multipliers[risk],
        "position_cap": m.position_caps[cap],
        "mode": m.modes[mode],
    }
    table = order_table(cfg.env, torch.float64, torch.device("cpu"))
    alloc = float(env.equity[0]) * label["risk_multiplier"] * label["position_cap"]
    orders = []
    for i, sym in enumerate(bundle.symbols):
        a = int(action[i])
        orders.append(
            {
                "symbol": sym,
                "action": ACTION_NAMES[a],
                "probability": round(float(prob[i]), 6),
                "buy_notional": round(float(table[0, a]) * alloc, 2),
                "sell_fraction": float(table[1, a]),
                "allowed": [ACTION_NAMES[k] for k in range(len(ACTION_NAMES)) if bool(obs.mask[0, i, k])],
                "directive": dict(label, index=int(directive[0])),
            }
        )
    return orders


def act(model: str | Path, data: str | Path, cfg: HmarlConfig | None = None) -> dict:
    """Load the bundle and the bars, decide for the newest bar; returns {"timestamp", "directive", "orders"}."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(resolve_model(model, cfg, Path(tmp)))
    market = market_from_canonical(read_canonical(data), source=str(data))
    inputs = latest_inputs(bundle, market, where=str(data))
    orders = decide(bundle, inputs)
    return {"timestamp": inputs.timestamp.isoformat(), "directive": orders[0]["directive"], "orders": orders}


def render(result: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["timestamp", *ORDER_FIELDS], lineterminator="\n")
    writer.writeheader()
    for row in result["orders"]:
        writer.writerow(
            {
                **row,
                "timestamp": result["timestamp"],
                "allowed": "|".join(row["allowed"]),
                "directive": f"{row['directive']['risk_multiplier']}/{row['directive']['position_cap']}/"
                f"{row['directive']['mode']}",
            }
        )
    return buf.getvalue()


def write_output(text: str, out: str | Path | None) -> None:
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
