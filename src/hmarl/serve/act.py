"""``hmarl act``: what a trading desk runs every bar. From a model bundle and the latest bars, the target
order of every symbol: the master's directive and each symbol agent's action, size and allowed actions.

The bundle (a folder or ``models:/<name>@<alias>``) is checked whole by
:func:`hmarl.serve.bundle.load_bundle`. ``--data`` is a canonical bar folder (the ingest step's output
format) with enough history for the feature windows (``features.window`` bars past the
``features.warmup_bars``). Features of the history are computed with the pipeline's own code and normalized
with the model fold's train statistics (:mod:`hmarl.serve.inputs`); the decision is for the newest bar, for
the account in ``--positions`` (:mod:`hmarl.serve.positions`; default a flat account holding
``env.initial_cash``), by a :class:`hmarl.serve.decider.Decider` (a desk keeps one across bars: it prepares
each next bar and holds the master's directive between master bars; one call is a master bar). Data whose
symbols, feature list or regime features differ from the model's is refused, naming the difference.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import tempfile
from pathlib import Path

import pandas as pd

from hmarl.config import HmarlConfig
from hmarl.data.canonical import read_canonical
from hmarl.data.market import market_from_canonical
from hmarl.env.actions import grid_size
from hmarl.errors import DataError
from hmarl.io import atomic_path, read_json, write_json
from hmarl.serve.bundle import load_bundle, resolve_model
from hmarl.serve.decider import Decider
from hmarl.serve.decision import MasterBar, MasterHold
from hmarl.serve.inputs import latest_inputs
from hmarl.serve.positions import read_positions

ORDER_FIELDS = ("symbol", "action", "probability", "buy_notional", "sell_fraction", "allowed", "directive")


def act(
    model: str | Path,
    data: str | Path,
    cfg: HmarlConfig | None = None,
    positions: str | Path | None = None,
    state: str | Path | None = None,
) -> dict:
    """Load the bundle and the bars, decide for the newest bar; returns {"timestamp", "directive", "orders"}.

    ``positions``: the account's file (:mod:`hmarl.serve.positions`); default a flat ``env.initial_cash``.
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
