"""``hmarl act``: what a trading desk runs every bar. From a model bundle and the latest bars, the target
order of every symbol: the master's directive and each symbol agent's action, size and allowed actions.

The bundle (a folder or ``models:/<name>@<alias>``) is checked whole by :func:`hmarl.bundle.load_bundle`.
``--data`` is a canonical bar
folder (the ingest step's output format) with enough history for the feature windows (``features.window``
bars past the ``features.warmup_bars``). Features of the history are computed with the pipeline's own code
and normalized with the model fold's train statistics; the decision is for the newest bar, for the
account in ``--positions`` (:mod:`hmarl.positions`; default a flat account holding ``env.initial_cash``),
by a :class:`hmarl.decider.Decider` (a desk keeps one across bars: it prepares each next bar and holds the
master's directive between master bars; one call is a master bar). Data whose symbols, feature list or
regime features differ from the model's is refused, naming the difference.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.inputs import AgentTables
from hmarl.agents.master import benchmark_table
from hmarl.bundle import Bundle, load_bundle, resolve_model
from hmarl.config import HmarlConfig
from hmarl.data.canonical import read_canonical
from hmarl.data.store import FeatureStore
from hmarl.decider import Decider, MasterBar, MasterHold, newest_bar, orders, start_bar
from hmarl.env.actions import grid_size
from hmarl.env.market import MarketData
from hmarl.env.vec_env import MarketEnv
from hmarl.errors import DataError
from hmarl.io import atomic_path, read_json, write_json
from hmarl.positions import Account, read_positions
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.inputs import feature_mismatch, model_inputs
from hmarl.steps.features import (
    Market,
    assemble_store,
    cash_rate_series,
    market_features,
    market_from_canonical,
)

ORDER_FIELDS = ("symbol", "action", "probability", "buy_notional", "sell_fraction", "allowed", "directive")


# --------------------------------------------------------------------------- checks and inputs
def check_data(bundle: Bundle, store: FeatureStore, where: str) -> None:
    """DataError naming how ``store`` (features of the data given) differs from what the model knows."""
    for key, what in (("freq", "bar frequency"), ("calendar", "calendar")):  # bundles before these: unchecked
        if key in bundle.data_meta and store.meta.get(key) != bundle.data_meta[key]:
            raise DataError(
                f"{where}: {what} {store.meta.get(key)!r} differs from the model's {bundle.data_meta[key]!r} "
                f"(it was trained on {bundle.data_meta.get('freq')} bars, calendar "
                f"{bundle.data_meta.get('calendar')}; give it data of that frequency and data.calendar)"
            )
    if store.symbols != bundle.symbols:
        missing = [s for s in bundle.symbols if s not in store.symbols]
        extra = [s for s in store.symbols if s not in bundle.symbols]
        what = f"missing {missing}, unexpected {extra}" if missing or extra else "same symbols, another order"
        raise DataError(f"{where}: symbols differ from the model's ({what})")
    if store.feature_names != bundle.feature_names:
        raise DataError(
            f"{where}: {feature_mismatch(store.feature_names, bundle.feature_names, 'data', 'model')}"
        )
    if store.regime_names != bundle.regime_names:
        raise DataError(
            f"{where}: regime features {store.regime_names} differ from the model's {bundle.regime_names} "
            "(exogenous series?)"
        )
    need = bundle.cfg.features.warmup_bars + bundle.window
    if store.num_bars < need:
        raise DataError(f"{where}: {store.num_bars} bars; the model needs at least {need} (warm-up + window)")


def with_model_norm(bundle: Bundle, store: FeatureStore, where: str = "data") -> FeatureStore:
    """``store`` checked against the model, holding the model fold's train statistics as its only fold
    (``model_inputs(store, 0)`` is then what the model's SL models, encoder and agents read)."""
    check_data(bundle, store, where)
    return dataclasses.replace(store, norm_mean=bundle.norm_mean[None], norm_std=bundle.norm_std[None])


def featurize(bundle: Bundle, market: Market, where: str = "data") -> FeatureStore:
    """New bars as the pipeline's feature store (its own code, over the whole history given: EMA-type
    features depend on where they start), normalized with the model's statistics."""
    warmup = bundle.cfg.features.warmup_bars
    store = assemble_store(
        market,
        market_features(market, warmup),
        bundle.norm_mean[None],
        bundle.norm_std[None],
        cash_rate=cash_rate_series(bundle.cfg, market),
        window=bundle.window,
        warmup_bars=warmup,
    )
    return with_model_norm(bundle, store, where)


@dataclass
class LatestInputs:
    windows: torch.Tensor  # (S, W, F) normalized feature windows ending at the newest bar
    market: MarketData  # the history plus one placeholder bar (never observed: nothing is filled)
    timestamp: pd.Timestamp


def latest_inputs(bundle: Bundle, market: Market, where: str = "data") -> LatestInputs:
    store = featurize(bundle, market, where)
    z = model_inputs(store, 0)[-bundle.window :]
    pad = lambda a: np.concatenate([a, a[-1:]])  # noqa: E731 (the placeholder bar repeats the newest)
    data = MarketData.from_arrays(
        open_=pad(store.price("open")),
        high=pad(store.price("high")),
        low=pad(store.price("low")),
        close=pad(store.price("close")),
        volume=pad(store.price("volume")),
        tradable=pad(store.tradable),
        benchmark=pad(store.benchmark),
        regime=pad(store.regime),
        bars_per_year=store.bars_per_year,
        symbols=store.symbols,
        timestamps=np.concatenate([store.timestamps, store.timestamps[-1:] + 1]),
        cfg=bundle.cfg.env,
    )
    stamp = pd.Timestamp(int(store.timestamps[-1]), tz="UTC")
    return LatestInputs(z.transpose(0, 1).contiguous(), data, stamp)


# --------------------------------------------------------------------------- the decision
@torch.no_grad()
def decide(
    bundle: Bundle, inputs: LatestInputs, account: Account | None = None, hold: MasterHold | None = None
) -> list[dict]:
    """One full decision for the newest bar: SL models, encoder, master (when due), symbol agents (greedy), on
    the device of the bundle's models.

    The reference computation, everything from scratch over the history given; :class:`Decider` is the
    same function kept warm between bars (what :func:`act` and a desk run). ``hold``: the directive in
    force (default: none, the master decides)."""
    cfg, device = bundle.cfg, bundle.device  # where the bundle's models are (Bundle.to)
    windows, market = inputs.windows.to(device), inputs.market.to(device)
    t = newest_bar(market)
    sl = torch.cat([calibrated_probs(m(windows), temp) for m, temp in bundle.sl_models], -1).unsqueeze(0)
    if bundle.encoder is not None:
        emb = bundle.encoder(windows.unsqueeze(0), sl)
        tables = AgentTables(emb, sl, None, device, market_offset=t, sl_offset=t)
    else:
        tables = AgentTables(windows.transpose(0, 1), sl, bundle.window, device, t - bundle.window + 1, t)
    env = MarketEnv(market, cfg.env, cfg.reward, num_envs=1, bar_range=(t, t + 2))
    obs = start_bar(env, account, hold)  # the episode starts at the newest bar
    bench = benchmark_table(market.benchmark, cfg.env.master.interval)
    h = Hierarchy(bundle.symbol_agent, tables, bundle.master, bench, symbol_greedy=True)
    if bool(obs.master_due[0]):
        obs = env.set_directive(h.director(greedy=True)(obs))
    logp, _ = h.symbol_outputs(obs)
    return orders(cfg.env, bundle.symbols, logp[0], obs.mask[0], int(env.directive[0]), float(env.equity[0]))


def act(
    model: str | Path,
    data: str | Path,
    cfg: HmarlConfig | None = None,
    positions: str | Path | None = None,
    state: str | Path | None = None,
) -> dict:
    """Load the bundle and the bars, decide for the newest bar; returns {"timestamp", "directive", "orders"}.

    ``positions``: the account's file (:mod:`hmarl.positions`); default a flat ``env.initial_cash``.
    ``state``: a JSON file carrying the master's last decision from one call to the next (read when it
    exists, written after), so a desk that runs one process per bar holds the directive between master
    bars as a resident :class:`Decider` does; without it every call is a master bar."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(resolve_model(model, cfg, Path(tmp)))
    limits = (cfg or bundle.cfg).desk
    account = read_positions(positions, bundle.symbols, limits) if positions is not None else None
    market = market_from_canonical(read_canonical(data), source=str(data))
    inputs = latest_inputs(bundle, market, where=str(data))
    decider = Decider(bundle)
    if state is not None and Path(state).exists():
        newest = int(inputs.timestamp.value)
        decider.master_bar = read_state(state, str(model), grid_size(bundle.cfg.env), newest)
    orders = decider.decide(inputs, account)
    check_orders(orders, f"orders for {data}")  # before anything is written: never NaN to the desk
    if state is not None:
        write_state(state, str(model), decider.master_bar)
    return {"timestamp": inputs.timestamp.isoformat(), "directive": orders[0]["directive"], "orders": orders}


def check_orders(orders: list[dict], where: str) -> None:
    """DataError naming the symbol and field of the first order number that is not finite."""
    for row in orders:
        for key in ("probability", "buy_notional", "sell_fraction"):
            if not math.isfinite(row[key]):
                raise DataError(
                    f"{where}: {row['symbol']}: {key} is {row[key]} (not finite); nothing written"
                )


def write_state(path: str | Path, model: str, bar: MasterBar) -> None:
    before = None if bar.before is None else dataclasses.asdict(bar.before)
    stamp = pd.Timestamp(bar.timestamp, tz="UTC").isoformat()
    write_json(path, {"model": model, "timestamp": stamp, "directive": bar.directive, "before": before})


def read_state(path: str | Path, model: str, num_directives: int, newest: int | None = None) -> MasterBar:
    """The master's last decision from a state file written by :func:`write_state` for ``model``; with
    ``newest`` (the data's newest bar, ns since the epoch) a state from a later bar is refused."""
    try:
        doc = read_json(path)
        hold = doc["before"]
        bar = MasterBar(
            _stamp(doc["timestamp"]),
            _whole(doc["directive"]),
            None if hold is None else MasterHold(_whole(hold["directive"]), _whole(hold["elapsed"])),
        )
        written_for = doc["model"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DataError(f"{path}: not a state file written by hmarl act ({type(e).__name__}: {e})") from None
    if written_for != model:
        raise DataError(f"{path}: state of model {written_for!r}, not {model!r} (use another state file)")
    for d in (bar.directive, *(() if bar.before is None else (bar.before.directive,))):
        if not 0 <= d < num_directives:
            raise DataError(f"{path}: directive {d} outside the model's grid of {num_directives}")
    if bar.before is not None and bar.before.elapsed < 0:
        raise DataError(f"{path}: before.elapsed is {bar.before.elapsed}; bars elapsed cannot be negative")
    if newest is not None and bar.timestamp > newest:
        raise DataError(
            f"{path}: timestamp {pd.Timestamp(bar.timestamp, tz='UTC').isoformat()} is after the newest bar of "
            f"the data ({pd.Timestamp(newest, tz='UTC').isoformat()}): a state of another feed, or a clock error"
        )
    return bar


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, found {value!r}")
    return value


def _stamp(value: object) -> int:
    if not isinstance(value, str):
        raise TypeError(f"timestamp: expected an ISO 8601 string, found {value!r}")
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"timestamp {value!r} is not a time")
    try:
        return int(stamp.value)
    except OverflowError:
        raise ValueError(f"timestamp {value!r} lies outside 1677..2262") from None


def render(result: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=2, allow_nan=False)
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
