"""Property-based fuzzing (Hypothesis) of what a desk hands ``hmarl act``: positions and state files, each
with at most one fault, decided on a trained bundle. The invariant: orders that are all finite, or a named
error naming the file; never another exception, never a NaN order. Profiles in tests/fuzz_profiles.py.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hmarl.env.actions import grid_size
from hmarl.errors import HmarlError

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_profiles import FIXTURES, SLOW  # noqa: E402

# a failing example's report may be long (a 400-digit number): report it rather than fail on the warning
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# --------------------------------------------------------------------------- positions and state files
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e308, -1e308, 1e-320, 5e11, 2e12]),
        st.text(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


EXTREME = st.sampled_from([1e308, -1e308, 3e38, 1e39, 1e-320, -1.0, 0.0, 5e11, 2e12, 1e10 + 1, 10**400])
BAD = st.one_of(
    EXTREME,
    EXTREME,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    JSON_VALUES,
)


BAD_TEXT = st.sampled_from(["2200-01-01T00:00:00+00:00", "2999-01-01", "NaT", "", "yesterday", "1e9", "-3"])


DOC_FAULTS = ["extreme", "extreme", "non-finite", "text", "any value", "key dropped", "whole document"]
FAULT_KINDS = ["none"] * 6 + DOC_FAULTS  # about half the files whole: both files of a decision, a quarter


@st.composite
def one_fault(draw, doc: dict, paths: list[tuple], numbers: list[tuple]):
    """``doc`` as JSON with at most one fault (one value at ``paths`` / ``numbers`` replaced or dropped, or
    the whole document replaced), so most files get past every other check; the kind of fault is drawn
    first, evenly, so the rare ones (1e308 shares) come up in a few dozen examples."""
    doc = copy.deepcopy(doc)
    kind = draw(st.sampled_from(FAULT_KINDS))
    if kind == "none":
        return doc
    if kind == "whole document":
        return draw(JSON_VALUES)
    path = draw(st.sampled_from(numbers if kind in ("extreme", "non-finite") and numbers else paths))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if kind == "key dropped":
        node.pop(path[-1])
    else:
        values = {
            "extreme": EXTREME,
            "non-finite": st.sampled_from([math.nan, math.inf, -math.inf]),
            "text": st.text(max_size=5) | BAD_TEXT,
            "any value": BAD,
        }
        node[path[-1]] = draw(values[kind])
    return doc


# The documents refer to the trained bundle through placeholders ("@symbol:k", "@bar:k", "@directive:k")
# filled in by :func:`materialize`: the strategies stay independent of the fixture (Hypothesis replays them).
@st.composite
def positions_docs(draw):
    held = draw(st.lists(st.integers(0, 20), unique=True, max_size=4))
    rows = [
        {
            "symbol": f"@symbol:{k}",
            "shares": draw(st.floats(0, 1e5)),
            "entry_price": draw(st.floats(0.01, 1e4)),
        }
        for k in held
    ]
    doc = {"cash": draw(st.floats(100.0, 1e9)), "positions": rows}  # faults bring the rest
    numbers = [("cash",)] + [("positions", i, k) for i in range(len(rows)) for k in ("shares", "entry_price")]
    paths = [("positions",)] + [("positions", i, "symbol") for i in range(len(rows))] + numbers
    return draw(one_fault(doc, paths, numbers))


@st.composite
def state_docs(draw):
    """Half the time the master's bar is one of the data's newest: the held directive then applies."""
    past = st.datetimes(
        min_value=pd.Timestamp("1990-01-01").to_pydatetime(),
        max_value=pd.Timestamp("2014-12-31").to_pydatetime(),
    )
    stamp = draw(st.integers(0, 28).map(lambda k: f"@bar:{k}") | past.map(lambda d: d.isoformat() + "+00:00"))
    directive = st.integers(0, 200).map(lambda k: f"@directive:{k}")
    doc = {
        "model": "@model",
        "timestamp": stamp,
        "directive": draw(directive),
        "before": draw(
            st.none() | st.fixed_dictionaries({"directive": directive, "elapsed": st.integers(0, 40)})
        ),
    }
    numbers = [("directive",)] + ([("before", "directive"), ("before", "elapsed")] if doc["before"] else [])
    paths = [("model",), ("timestamp",), ("before",), *numbers]
    return draw(one_fault(doc, paths, numbers))


def materialize(doc, desk) -> str:
    """``doc`` as JSON with its placeholders filled from the ``desk`` fixture (NaN / Infinity literals too:
    Python's json reads them back)."""
    bundle, _, model, stamps = desk
    grid = grid_size(bundle.cfg.env)

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str) and value.startswith("@"):
            kind, _, k = value[1:].partition(":")
            if kind == "symbol":
                return bundle.symbols[int(k) % len(bundle.symbols)]
            if kind == "bar":
                return pd.Timestamp(stamps[int(k)], tz="UTC").isoformat()
            if kind == "directive":
                return int(k) % grid
            if kind == "model":
                return model
        return value

    return json.dumps(fill(doc))


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    """A trained bundle, its newest bar's inputs, and the checks of one decision."""
    from bundle_fixtures import trained_pipeline
    from hmarl.data.canonical import read_canonical
    from hmarl.data.market import market_from_canonical
    from hmarl.serve.bundle import load_bundle
    from hmarl.serve.inputs import latest_inputs

    root = trained_pipeline(tmp_path_factory)
    bundle = load_bundle(root)
    inputs = latest_inputs(bundle, market_from_canonical(read_canonical(root / "canonical")))
    stamps = tuple(int(t) for t in np.asarray(inputs.market.timestamps)[-30:-1])  # newest real bars
    return bundle, inputs, str(root), stamps


def check_desk_inputs(desk, positions: str, state: str, tmp: Path) -> None:
    from hmarl.serve.act import check_orders, read_state
    from hmarl.serve.decider import Decider
    from hmarl.serve.positions import read_positions

    bundle, inputs, model, _ = desk
    (tmp / "p.json").write_text(positions)
    (tmp / "s.json").write_text(state)
    decider = Decider(bundle)
    try:
        account = read_positions(tmp / "p.json", bundle.symbols, bundle.cfg.desk)
        newest = int(inputs.timestamp.value)
        decider.master_bar = read_state(tmp / "s.json", model, grid_size(bundle.cfg.env), newest)
    except HmarlError as exc:
        assert str(exc).startswith(str(tmp)), str(exc)  # the message names the file
        event("file refused")
        return
    assert (
        math.isfinite(account.cash) and np.isfinite(account.shares).all() and np.isfinite(account.entry).all()
    )
    assert decider.master_bar.timestamp <= newest
    assert decider.master_bar.before is None or decider.master_bar.before.elapsed >= 0
    try:
        orders = decider.decide(inputs, account)
    except HmarlError as exc:  # e.g. equity not positive at the newest close
        assert "account" in str(exc) or str(tmp) in str(exc), str(exc)
        event(f"decision refused: {str(exc).split(': ', 1)[-1][:40]}")
        return
    check_orders(orders, "fuzzed account")
    event("orders")
    json.dumps(orders, allow_nan=False)


@given(positions=positions_docs(), state=state_docs())
@settings(FIXTURES, max_examples=2 * settings.default.max_examples)
def test_positions_and_state_files_give_finite_orders_or_a_named_error(desk, positions, state, tmp_path):
    check_desk_inputs(desk, materialize(positions, desk), materialize(state, desk), tmp_path)


@pytest.mark.slow
@given(positions=positions_docs(), state=state_docs())
@SLOW
def test_positions_and_state_files_long(desk, positions, state, tmp_path):
    check_desk_inputs(desk, materialize(positions, desk), materialize(state, desk), tmp_path)
