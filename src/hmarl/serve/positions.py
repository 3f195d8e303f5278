"""The account a decision is for: cash plus, per symbol, shares held and their average entry price.

``hmarl act --positions FILE`` reads it from JSON or CSV (by suffix)::

    {"cash": 81250.0, "positions": [{"symbol": "AAA", "shares": 120, "entry_price": 41.5}, ...]}

    symbol,shares,entry_price
    AAA,120,41.5
    CASH,81250,            <- the cash row: its ``shares`` column holds the cash amount

Symbols not listed are flat. Shares are long only (>= 0, fractions allowed) and a held symbol needs an
entry price > 0; cash must be given (it may be negative on a leveraged account). Every value must be
finite and within the desk's limits (``desk.max_cash``, ``desk.max_shares``, ``desk.max_price``): a
value beyond them is a typo or a unit error, and would make orders overflow. Anything else is a
:class:`~hmarl.errors.DataError` naming the file, the row, the column and the symbol.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from hmarl.errors import DataError
from hmarl.params_base import Section

COLUMNS = ("symbol", "shares", "entry_price")
CASH_SYMBOL = "CASH"


class DeskConfig(Section):
    """Sanity limits of the account a desk passes in (``desk`` in params.yaml)."""

    max_cash: float = Field(1e12, gt=0)  # |cash|
    max_shares: float = Field(1e10, gt=0)  # shares of one symbol
    max_price: float = Field(1e7, gt=0)  # entry price of one share


@dataclass(frozen=True)
class Account:
    cash: float
    shares: np.ndarray  # (S,) float64, >= 0, in the model's symbol order
    entry: np.ndarray  # (S,) float64 average entry price, 0 where flat
    source: str = "account"  # where it came from, for error messages

    @classmethod
    def flat(cls, num_symbols: int, cash: float) -> Account:
        return cls(float(cash), np.zeros(num_symbols), np.zeros(num_symbols), "flat account")

    @property
    def is_flat(self) -> bool:
        return not bool((self.shares > 0).any())


def read_positions(path: str | Path, symbols: list[str], limits: DeskConfig | None = None) -> Account:
    """The account in ``path`` (``.json`` or ``.csv``) over the model's ``symbols``."""
    path, limits = Path(path), limits or DeskConfig()
    if not path.is_file():
        raise DataError(f"{path}: positions file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        cash, rows = _json_rows(path)
    elif suffix == ".csv":
        cash, rows = _csv_rows(path)
    else:
        raise DataError(f"{path}: positions file must be .json or .csv, got {suffix or 'no suffix'!r}")
    return _account(path, cash, rows, symbols, limits)


def _json_rows(path: Path) -> tuple[object, list[tuple[str, dict]]]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("positions", []), list):
        raise DataError(
            f'{path}: expected {{"cash": ..., "positions": [{{"symbol", "shares", "entry_price"}}]}}'
        )
    rows = []
    for i, row in enumerate(doc.get("positions", [])):
        where = f"positions[{i}]"
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected an object with {list(COLUMNS)}")
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise DataError(f"{path}: {where} ({row.get('symbol', '?')}): missing column {missing[0]!r}")
        rows.append((where, row))
    return doc.get("cash"), rows


def _csv_rows(path: Path) -> tuple[object, list[tuple[str, dict]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r} (header {header}, need {list(COLUMNS)})")
        cash, rows = None, []
        for line, raw in enumerate(reader, start=2):  # line 1 is the header
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if row["symbol"].upper() == CASH_SYMBOL:
                cash = _number(path, f"row {line}", CASH_SYMBOL, "shares", row["shares"])
                continue
            rows.append((f"row {line}", row))
    return cash, rows


def _number(
    path: Path, where: str, symbol: str, column: str, value: object, limit: tuple[str, float] | None = None
) -> float:
    """A finite number; with ``limit`` (its params key and value), at most that in absolute value."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise DataError(
            f"{path}: {where} ({symbol}): column {column!r} must be a finite number, got {value!r}"
        )
    if limit is not None and abs(x) > limit[1]:
        raise DataError(
            f"{path}: {where} ({symbol}): column {column!r} is {x:g}, beyond {limit[0]} ({limit[1]:g}); "
            "a unit or typing error?"
        )
    return x


def _account(
    path: Path, cash: object, rows: list[tuple[str, dict]], symbols: list[str], limits: DeskConfig
) -> Account:
    if cash is None:
        raise DataError(
            f'{path}: no cash given (JSON: a "cash" key; CSV: a row {CASH_SYMBOL},<amount>, with the amount '
            "in the shares column)"
        )
    cash = _number(path, "cash", CASH_SYMBOL, "cash", cash, ("desk.max_cash", limits.max_cash))
    index = {s: i for i, s in enumerate(symbols)}
    shares, entry = np.zeros(len(symbols)), np.zeros(len(symbols))
    seen: dict[str, str] = {}
    for where, row in rows:
        symbol = str(row["symbol"]).strip()
        if symbol not in index:
            raise DataError(
                f"{path}: {where}: unknown symbol {symbol!r} (not one of the model's {len(symbols)} symbols)"
            )
        if symbol in seen:
            raise DataError(f"{path}: {where}: symbol {symbol!r} listed twice (first at {seen[symbol]})")
        seen[symbol] = where
        n = _number(path, where, symbol, "shares", row["shares"], ("desk.max_shares", limits.max_shares))
        if n < 0:
            raise DataError(
                f"{path}: {where} ({symbol}): column 'shares' is negative ({n:g}); short positions are not "
                "supported"
            )
        price_limit = ("desk.max_price", limits.max_price)
        price = _number(path, where, symbol, "entry_price", row["entry_price"], price_limit) if n > 0 else 0.0
        if n > 0 and price <= 0:
            raise DataError(
                f"{path}: {where} ({symbol}): column 'entry_price' must be > 0 for a held position"
            )
        shares[index[symbol]], entry[index[symbol]] = n, price
    return Account(cash, shares, entry, str(path))
