"""Property-based fuzzing (Hypothesis) of what users hand in: bar files, params overrides, positions and state
files. The invariant everywhere: success with valid outputs, or a named error (``HmarlError`` /
``ConfigError``: the CLI prints it, exit 2) with nothing written downstream; never another exception (a
traceback), never a non-finite order.

Examples run in-process. The default suite uses the ``ci`` profile (few examples, derandomized: the same
examples every run); ``HYPOTHESIS_PROFILE=slow`` or the ``slow``-marked variants (``pytest -m slow``) run
many random examples.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hmarl.cli import main
from hmarl.config import HmarlConfig, build_config, config_dict
from hmarl.env.actions import grid_size
from hmarl.errors import HmarlError

sys.path.insert(0, str(Path(__file__).parent))
from test_refusals import write_bars  # noqa: E402

# a failing example's report may be long (a 400-digit number): report it rather than fail on the warning
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile(
    "slow",
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# the slow-marked variants: the slow profile whatever the loaded one (fixtures are module-scoped or per test)
SLOW = settings(
    settings.get_profile("slow"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- bar files
COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume")
BAD_NUMBERS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e308, 1e-308])


@st.composite
def broken_bars(draw) -> bytes:
    """A valid long bar file (3 symbols x 130 business days) with one to three faults."""
    df = pd.read_csv(io.StringIO(BASE_BARS))
    for _ in range(draw(st.integers(1, 3))):
        fault = draw(st.sampled_from(FAULTS))
        df = fault(draw, df)
        if not isinstance(df, pd.DataFrame):
            return df  # a raw byte-level fault ends the file's story
    return df.to_csv(index=False).encode()


def _rows(draw, df: pd.DataFrame, most: int = 5) -> list[int]:
    return draw(st.lists(st.integers(0, max(len(df) - 1, 0)), min_size=1, max_size=most)) if len(df) else []


def _drop_column(draw, df):
    return df.drop(columns=[draw(st.sampled_from(list(df.columns)))])


def _rename_column(draw, df):
    col = draw(st.sampled_from(list(df.columns)))
    return df.rename(columns={col: draw(st.sampled_from(["Close ", "px", "", "date", "ticker", "open"]))})


def _bad_values(draw, df):
    col = draw(st.sampled_from([c for c in COLUMNS[2:] if c in df.columns] or list(df.columns)))
    df = df.copy()
    if col in df.columns and df[col].dtype.kind == "f":
        df.loc[_rows(draw, df), col] = draw(BAD_NUMBERS)
    return df


def _text_in_numbers(draw, df):
    col = draw(st.sampled_from(list(df.columns)))
    df = df.astype({col: object})
    df.loc[_rows(draw, df), col] = draw(st.sampled_from(["n/a", "1,5", "abc", "", "1e999", "--"]))
    return df


def _duplicates(draw, df):
    return pd.concat([df, df.iloc[_rows(draw, df)]], ignore_index=True)


def _gaps(draw, df):
    lo = draw(st.integers(0, max(len(df) - 1, 0)))
    return df.drop(index=df.index[lo : lo + draw(st.integers(1, 60))])


def _scale_error(draw, df):
    """A split or unit error: a stretch of one symbol's prices multiplied."""
    df = df.copy()
    lo = draw(st.integers(0, max(len(df) - 1, 0)))
    cols = [c for c in ("open", "high", "low", "close") if c in df.columns and df[c].dtype.kind == "f"]
    df.loc[df.index[lo : lo + draw(st.integers(1, 40))], cols] *= draw(st.sampled_from([100.0, 0.01, -1.0]))
    return df


def _bad_timestamps(draw, df):
    df = df.astype({"timestamp": object}) if "timestamp" in df.columns else df
    if "timestamp" in df.columns:
        df.loc[_rows(draw, df), "timestamp"] = draw(st.sampled_from(["2015-02-30", "yesterday", "", "1e18"]))
    return df


def _shuffle(draw, df):
    return df.sample(frac=1.0, random_state=draw(st.integers(0, 2**16)))


def _truncate_rows(draw, df):
    return df.iloc[: draw(st.integers(0, 20))]


def _raw_bytes(draw, df):
    text = df.to_csv(index=False).encode()
    return draw(st.sampled_from([b"", text[: len(text) // 3], b"\x00\xff" * 50, text.replace(b",", b";")]))


FAULTS = [
    _drop_column,
    _rename_column,
    _bad_values,
    _text_in_numbers,
    _duplicates,
    _gaps,
    _scale_error,
    _bad_timestamps,
    _shuffle,
    _truncate_rows,
    _raw_bytes,
]


def _bars_base() -> str:
    buf = io.StringIO()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"hmarl-fuzz-bars-{os.getpid()}.csv"
    write_bars(tmp, 3, 130)
    buf.write(tmp.read_text())
    tmp.unlink()
    return buf.getvalue()


BASE_BARS = _bars_base()


def check_bar_file(content: bytes, folder: Path) -> None:
    """ingest, then validate: each succeeds with its output or raises a named error leaving none."""
    from hmarl.data.canonical import read_canonical
    from hmarl.steps.runner import execute

    folder.mkdir(parents=True)
    bars = folder / "bars.csv"
    bars.write_bytes(content)
    cfg = build_config(
        {},
        [
            "tracking.enabled=false",
            "data.source=path",
            f"data.path={bars}",
            "universe.top_n=3",
            "universe.dollar_volume_window=20",
            "validation.min_bars_per_symbol=50",
        ],
    )
    canonical, report = folder / "canonical", folder / "validate"
    try:
        execute("ingest", cfg, {}, {"canonical": str(canonical)})
    except HmarlError as exc:
        assert str(exc).strip()
        assert sorted(p.name for p in folder.iterdir()) == ["bars.csv"]  # nothing written, no temp left
        event(f"ingest refused: {type(exc).__name__}")
        return
    data = read_canonical(canonical)  # a valid canonical folder (grid and fingerprint re-checked)
    try:
        execute("validate", cfg, {"canonical": str(canonical)}, {"report": str(report)})
    except HmarlError as exc:
        assert str(exc).strip() and not report.exists()
        event("validate refused")
        return
    event("validated")
    prices = data.bars.loc[data.bars["tradable"], ["open", "high", "low", "close"]].to_numpy(float)
    assert np.isfinite(prices).all() and (prices > 0).all(), (
        "validated bars hold non-finite or non-positive prices"
    )


@given(content=broken_bars())
@FIXTURES
def test_bad_bar_files_are_ingested_cleanly_or_refused_by_name(content, tmp_path_factory):
    check_bar_file(content, tmp_path_factory.mktemp("bars") / "case")


@pytest.mark.slow
@given(content=broken_bars())
@SLOW
def test_bad_bar_files_long(content, tmp_path_factory):
    check_bar_file(content, tmp_path_factory.mktemp("bars") / "case")


# --------------------------------------------------------------------------- params overrides
def _keys(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and hasattr(kind, "model_fields"):
            out += _keys(kind, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


KEYS = _keys(HmarlConfig)
SCALARS = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["1e9", "1.5e3", "-1e-3", "1e400", "nan", ".inf", "0x10", "true", "null", "[1, 2]", "{a: 1}"]
    ),
    st.text(max_size=12),
    st.booleans(),
)
OVERRIDES = st.lists(
    st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), SCALARS), min_size=1, max_size=4
)


def _override(key: str, value) -> str:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if not isinstance(value, float)
        else repr(value)
    )
    return f"{key}={text}"


def check_overrides(pairs, tmp: Path, capsys) -> None:
    from hmarl.config import load_config

    params = tmp / "params.yaml"
    params.write_text("tracking: {enabled: false}\n")
    overrides = [_override(key, value) for key, value in pairs]
    argv = ["config", "--params", str(params)]
    for text in overrides:
        argv += ["--set", text]
    code = main(argv)  # anything but ConfigError / HmarlError escapes and fails the test
    out, err = capsys.readouterr()
    if code == 0:
        cfg = load_config(params, overrides)
        floats = [v for v in _leaves(config_dict(cfg)) if isinstance(v, float)]
        assert all(math.isfinite(v) for v in floats), "params hold NaN or infinity"
        assert build_config(yaml.safe_load(out)) == cfg  # what it printed reloads as the same params
    else:
        assert code == 2 and err.startswith("hmarl: error: ") and "Traceback" not in err, err


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


@given(pairs=OVERRIDES)
@settings(FIXTURES, max_examples=150)
def test_params_overrides_parse_or_are_refused_by_key(pairs, tmp_path, capsys):
    check_overrides(pairs, tmp_path, capsys)


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
    from hmarl.act import latest_inputs
    from hmarl.bundle import load_bundle
    from hmarl.data.canonical import read_canonical
    from hmarl.steps.features import market_from_canonical

    root = trained_pipeline(tmp_path_factory)
    bundle = load_bundle(root)
    inputs = latest_inputs(bundle, market_from_canonical(read_canonical(root / "canonical")))
    stamps = tuple(int(t) for t in np.asarray(inputs.market.timestamps)[-30:-1])  # newest real bars
    return bundle, inputs, str(root), stamps


def check_desk_inputs(desk, positions: str, state: str, tmp: Path) -> None:
    from hmarl.act import check_orders, read_state
    from hmarl.decider import Decider
    from hmarl.positions import read_positions

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
