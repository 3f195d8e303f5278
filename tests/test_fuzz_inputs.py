"""Property-based fuzzing (Hypothesis) of bar files and params overrides. The invariant: success with
valid outputs, or a named error (``HmarlError`` / ``ConfigError``: the CLI prints it, exit 2) with nothing
written downstream; never another exception (a traceback). Examples run in-process; profiles in
tests/fuzz_profiles.py (the positions and state files: tests/test_fuzz_desk.py).
"""

from __future__ import annotations

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
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hmarl.cli import main
from hmarl.config import HmarlConfig, build_config, config_dict
from hmarl.errors import HmarlError

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_profiles import FIXTURES, SLOW  # noqa: E402
from test_refusals import write_bars  # noqa: E402

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
