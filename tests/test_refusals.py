"""Every row of the README's "What it refuses" table (tests/refusal_cases.py) holds: the command exits 2 with
``hmarl: error: <file>: <what is wrong>``, no traceback, nothing written (no orders, no state change, no step
output), and a crafted pickle never runs."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from hmarl.cli import main
from hmarl.config import config_dict

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixtures import gate_folder, model_config, model_inputs, trained_pipeline  # noqa: E402
from refusal_cases import CASES, MARKERS, Setup, copy_bundle, table  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def write_bars(path: Path, num_symbols: int = 3, num_bars: int = 150) -> Path:
    """A valid long bar file: random walks on business days."""
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2015-01-02", periods=num_bars, tz="UTC")
    frames = []
    for k in range(num_symbols):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, num_bars)))
        frames.append(
            pd.DataFrame(
                {
                    "symbol": f"S{k}",
                    "timestamp": days.strftime("%Y-%m-%d"),
                    "open": close,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": 1e6,
                }
            )
        )
    pd.concat(frames).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from hmarl.serve.assemble import assemble_bundle

    root = trained_pipeline(tmp_path_factory)
    cfg = model_config(root)
    work = tmp_path_factory.mktemp("refusals")
    gate = gate_folder(work, cfg, go=True)
    bundle = work / "bundle"
    inputs = {k: Path(v) for k, v in model_inputs(root).items()}
    assemble_bundle(cfg, {**inputs, "gate": gate}, bundle, json.loads((gate / "gate.json").read_text()))
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(config_dict(cfg)))
    symbols = json.loads((bundle / "features" / "meta.json").read_text())["symbols"]
    bars = write_bars(work / "bars.csv")
    return SimpleNamespace(root=root, bundle=bundle, params=params, symbols=symbols, bars=bars)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.input} / {c.fault}" for c in CASES])
def test_refused_with_a_named_error_and_nothing_written(case, base, tmp_path, capsys):
    with ExitStack() as stack:
        work = tmp_path / "work"
        work.mkdir()
        setup = Setup(
            copy_bundle(base.bundle, tmp_path / "bundle"),
            base.root / "canonical",
            work,
            base.root,
            base.params,
            stack,
            base.symbols,
            base.bars,
        )
        argv = case.argv(setup)
        before = _files(work)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "weights_only=False" not in err
    message = err[err.index("hmarl: error: ") :]
    assert case.error in message, message
    assert _files(work) == before  # no orders, state untouched, no step output, the crafted pickle never ran
    assert not (work / "ran").exists()


def test_the_readme_table_is_the_tested_cases():
    text = README.read_text()
    assert MARKERS[0] in text and MARKERS[1] in text, "README: the refusal table's markers are missing"
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    assert text[start:end].strip() == table(), "README table out of date: python tests/refusal_cases.py"


def test_evaluate_outside_a_project_needs_no_params_and_writes_only_its_output(
    base, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the bundle brings its own params
    code = main(
        ["evaluate", "--model", str(base.bundle), "--data", str(base.root / "canonical"), "--out", "ev"]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # no mlruns.db, no stray files
    assert (tmp_path / "ev" / "metrics.json").is_file()
    assert main(["evaluate", "--model", "b", "--data", "d", "--out", "o", "--set", "seed=1"]) == 2
    assert "--set needs a params file" in capsys.readouterr().err
