"""``hmarl evaluate``: a model bundle on data, its inputs recomputed from the bundle alone (saved normalization,
SL models, encoder). On the pipeline's own data it reproduces the pipeline's caches and the walk-forward
step's evaluation exactly; it writes metrics.json / report.html, and refuses data that does not match."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hmarl.cli import main
from hmarl.data.canonical import read_canonical, write_canonical
from hmarl.data.store import FeatureStore
from hmarl.errors import DataError
from hmarl.evaluation.period import BASELINES, POLICY, PeriodEvaluation
from hmarl.serve.assemble import assemble_bundle
from hmarl.serve.bundle import load_bundle
from hmarl.serve.evaluate import evaluate_bundle, evaluate_model, first_bar, model_data
from hmarl.serve.inputs import with_model_norm

sys.path.insert(0, str(Path(__file__).parent))
from bundle_fixtures import gate_folder, model_config, model_inputs, trained_pipeline  # noqa: E402

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
REQUIRED = ("total_return", "annual_return", "sharpe", "max_drawdown", "turnover", "costs_paid")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return trained_pipeline(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle_dir(root, tmp_path_factory) -> Path:
    """The promote step's bundle (no feature arrays, no caches): everything must come from it alone."""
    cfg = model_config(root)
    inputs = {k: Path(v) for k, v in model_inputs(root).items()}
    gate = gate_folder(tmp_path_factory.mktemp("gate"), cfg, go=True)
    out = tmp_path_factory.mktemp("assembled") / "bundle"
    assemble_bundle(cfg, {**inputs, "gate": gate}, out, json.loads((gate / "gate.json").read_text()))
    return out


def test_bundle_is_small_and_loads(bundle_dir, root):
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert {"features/meta.json", "features/norm.npz", "master/master.pt", "symbols/agent.pt"} <= files
    assert {
        "gate.json",
        "params.yaml",
        "manifest.json",
        "sl_cache/manifest.json",
        "encoder/manifest.json",
    } <= files
    assert not any(f.endswith((".npy",)) for f in files)  # no feature arrays, probabilities or embeddings
    assert not any("inner" in f for f in files)  # only the fold's SL checkpoints
    bundle = load_bundle(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    store = FeatureStore.load(root / "features")
    assert manifest["fingerprint"] == store.meta["fingerprint"] and manifest["fold"] == bundle.fold == 0
    assert manifest["symbols"] == store.symbols and manifest["gate_decision"] == "go"


def test_recomputed_inputs_equal_the_pipeline_caches(bundle_dir, root):
    bundle = load_bundle(bundle_dir)
    store = FeatureStore.load(root / "features")
    lo, hi = store.meta["folds"][0]["test"]
    data = model_data(bundle, with_model_norm(bundle, store), (lo, hi))
    np.testing.assert_array_equal(data.sl_probs[lo:hi], np.load(root / "sl_cache" / "probs.npy")[lo:hi])
    assert np.isnan(data.sl_probs[:lo]).all()
    embeddings = np.load(root / "encoder" / "embeddings.npy")[lo:hi]
    np.testing.assert_array_equal(data.tables.market[lo:hi].numpy(), embeddings)


def test_evaluation_of_the_bundle_equals_the_walk_forward_step(bundle_dir, root):
    bundle = load_bundle(bundle_dir)
    wf = PeriodEvaluation.load(root / "walk_forward" / "fold_0")
    store = FeatureStore.load(root / "features")
    (period,) = evaluate_bundle(bundle, store, [(wf.label, wf.bars)], model_config(root))
    assert period.dates == wf.dates and sorted(period.series) == sorted(wf.series)
    for cost, by_name in wf.series.items():
        assert sorted(period.series[cost]) == sorted(by_name) == sorted([POLICY, *BASELINES])
        for name, s in by_name.items():
            np.testing.assert_allclose(period.series[cost][name].equity, s.equity, rtol=1e-12)


def test_cli_writes_metrics_and_report(bundle_dir, root, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(bundle_dir), "--data", str(root / "canonical"), "--out", str(out)]
    quick = ["--set", "tracking.enabled=false", "--set", "walk_forward.cost_bps=[0]"]  # 0 and the base cost
    assert main([*args, "--params", PARAMS, *quick]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    for name in (POLICY, *BASELINES):
        missing = [k for k in REQUIRED if k not in metrics[name]]
        assert not missing, f"{name}: {missing}"
        assert all(metrics[name][k] is None or np.isfinite(metrics[name][k]) for k in REQUIRED)
    assert "deflated_sharpe" in metrics[POLICY] and printed["policy"] == metrics[POLICY]
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "buy_hold" in html
    # every bar past the feature warm-up, on the model's own trading rules
    bundle = load_bundle(bundle_dir)
    period = PeriodEvaluation.load(out / "period")
    assert period.bars == (first_bar(bundle), read_canonical(root / "canonical").meta["num_bars"])
    assert metrics[POLICY]["num_bars"] == period.bars[1] - period.bars[0] - 1
    assert period.cost_bps == bundle.cfg.env.commission_bps_round_trip
    assert sorted(period.series) == sorted({0.0, period.cost_bps})  # the caller's cost levels
    # deterministic: the same model on the same data gives the same numbers
    again = evaluate_model(bundle_dir, root / "canonical", tmp_path / "again", model_config(root))
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == metrics
    assert again[POLICY]["sharpe"] == pytest.approx(metrics[POLICY]["sharpe"])


def test_data_that_does_not_match_is_refused(bundle_dir, root, tmp_path, capsys):
    canon = read_canonical(root / "canonical")
    dropped = canon.symbols[-1]
    keep = [s for s in canon.symbols if s != dropped]
    other = tmp_path / "fewer"
    write_canonical(
        other,
        canon.bars[canon.bars["symbol"] != dropped].reset_index(drop=True),
        canon.benchmark,
        canon.exogenous,
        {**canon.meta, "symbols": keep, "num_symbols": len(keep)},
    )
    out = tmp_path / "eval"
    with pytest.raises(DataError, match=rf"symbols differ from the model's \(missing \['{dropped}'\]"):
        evaluate_model(bundle_dir, other, out)
    args = ["evaluate", "--model", str(bundle_dir), "--data", str(other), "--out", str(out)]
    assert main([*args, "--params", PARAMS, "--set", "tracking.enabled=false"]) == 2
    assert dropped in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".eval*"))
    # another feature list: named in the error
    bundle = load_bundle(bundle_dir)
    other_model = dataclasses.replace(bundle, feature_names=[*bundle.feature_names[:-1], "made_up"])
    store = FeatureStore.load(root / "features")
    with pytest.raises(DataError, match="made_up"):
        evaluate_bundle(other_model, store, [("x", store.meta["folds"][0]["test"])])
