"""``hmarl act`` on a bundle built by the real pipeline steps: it reproduces the pipeline's own inputs for
the newest bar (normalized features, SL probabilities, encoder embedding), emits one order per symbol that
respects the masks and the master's directive, writes JSON/CSV, and refuses data that does not match."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hmarl.cli import main
from hmarl.data.canonical import read_canonical, write_canonical
from hmarl.data.market import market_from_canonical
from hmarl.data.store import FeatureStore
from hmarl.env.actions import ACTION_NAMES
from hmarl.errors import DataError
from hmarl.serve.act import act
from hmarl.serve.bundle import load_bundle
from hmarl.serve.decider import Decider
from hmarl.serve.decision import MasterHold, decide
from hmarl.serve.inputs import latest_inputs
from hmarl.sl.calibration import calibrated_probs
from hmarl.sl.inputs import model_inputs
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, build_upstream, market_config  # noqa: E402

MASTER = ["master.hidden=[32,16]", "master.num_envs=4", "master.num_steps=16", "master.total_steps=32"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """The pipeline's outputs under their step output names: a model bundle."""
    root = tmp_path_factory.mktemp("bundle")
    up = build_upstream(root, market_config(TINY, "regime"))
    cfg = market_config(TINY, "regime", *AGENT, "ppo.total_steps=32", f"ppo.checkpoint_dir={root / 'ck'}")
    execute("train_symbols", cfg, up, {"model": str(root / "symbols")})
    cfg = market_config(TINY, "regime", *AGENT, *MASTER, f"master.checkpoint_dir={root / 'mck'}")
    execute("train_master", cfg, {**up, "symbols": str(root / "symbols")}, {"model": str(root / "master")})
    return root


def market(bundle_dir: Path):
    return market_from_canonical(read_canonical(bundle_dir / "canonical"))


def test_act_reproduces_the_pipeline_inputs_of_the_newest_bar(bundle_dir):
    bundle = load_bundle(bundle_dir)
    inputs = latest_inputs(bundle, market(bundle_dir))
    store = FeatureStore.load(bundle_dir / "features")
    expected = model_inputs(store, bundle.fold)[-bundle.window :].transpose(0, 1)
    assert torch.equal(inputs.windows, expected)
    with torch.no_grad():
        sl = torch.cat([calibrated_probs(m(inputs.windows), t) for m, t in bundle.sl_models], -1)
        emb = bundle.encoder(inputs.windows.unsqueeze(0), sl.unsqueeze(0))[0]
    cached = np.load(bundle_dir / "sl_cache" / "probs.npy")[-1]
    np.testing.assert_allclose(sl.numpy(), cached, atol=1e-5)
    embedded = np.load(bundle_dir / "encoder" / "embeddings.npy")[-1].astype(np.float32)
    np.testing.assert_allclose(emb.numpy(), embedded, atol=2e-3)  # the cache is float16


def test_orders_respect_masks_and_the_directive(bundle_dir):
    bundle = load_bundle(bundle_dir)
    result = act(bundle_dir, bundle_dir / "canonical")
    orders = result["orders"]
    assert [o["symbol"] for o in orders] == bundle.symbols
    d = result["directive"]
    grid = bundle.cfg.env.master
    assert d["risk_multiplier"] in grid.risk_multipliers and d["mode"] in grid.modes
    alloc = bundle.cfg.env.initial_cash * d["risk_multiplier"] * d["position_cap"]
    fractions = dict(zip(("BUY_SMALL", "BUY_MEDIUM", "BUY_LARGE"), bundle.cfg.env.buy_fractions, strict=True))
    for o in orders:
        assert o["action"] in o["allowed"] and "HOLD" in o["allowed"]
        assert o["directive"] == d
        assert o["buy_notional"] == pytest.approx(fractions.get(o["action"], 0.0) * alloc, abs=0.01)
        assert not {"SELL_ALL", "SELL_PARTIAL"} & set(o["allowed"])  # a flat account has nothing to sell
    # greedy and deterministic
    assert act(bundle_dir, bundle_dir / "canonical") == result


def test_cli_prints_json_and_writes_csv(bundle_dir, tmp_path, capsys):
    assert main(["act", "--model", str(bundle_dir), "--data", str(bundle_dir / "canonical")]) == 0
    printed = json.loads(capsys.readouterr().out)
    out = tmp_path / "orders.csv"
    assert (
        main(["act", "--model", str(bundle_dir), "--data", str(bundle_dir / "canonical"), "--out", str(out)])
        == 0
    )
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["symbol"] for r in rows] == [o["symbol"] for o in printed["orders"]]
    assert [r["action"] for r in rows] == [o["action"] for o in printed["orders"]]
    assert all(r["action"] in ACTION_NAMES and r["timestamp"] == printed["timestamp"] for r in rows)


def test_data_that_does_not_match_the_model_is_refused_naming_the_difference(bundle_dir, tmp_path, capsys):
    bundle = load_bundle(bundle_dir)
    m = market(bundle_dir)
    fewer = dataclasses.replace(m, symbols=m.symbols[:-1], ohlcv=m.ohlcv[:, :-1], tradable=m.tradable[:, :-1])
    with pytest.raises(DataError, match=rf"missing \['{m.symbols[-1]}'\]"):
        latest_inputs(bundle, fewer)
    other = dataclasses.replace(bundle, feature_names=[*bundle.feature_names[:-1], "made_up"])
    with pytest.raises(DataError, match="made_up"):
        latest_inputs(other, m)
    short = dataclasses.replace(
        m,
        timestamps=m.timestamps[-30:],
        ohlcv=m.ohlcv[-30:],
        tradable=m.tradable[-30:],
        benchmark=m.benchmark[-30:],
    )
    with pytest.raises(DataError, match="needs at least"):
        latest_inputs(bundle, short)
    assert main(["act", "--model", str(tmp_path), "--data", str(bundle_dir / "canonical")]) == 2
    assert "not a model bundle" in capsys.readouterr().err


def test_decision_is_for_the_newest_bar(bundle_dir):
    """Changing only the newest bar's prices changes the inputs of the decision; older bars are history."""
    bundle = load_bundle(bundle_dir)
    m = market(bundle_dir)
    base = latest_inputs(bundle, m)
    ohlcv = m.ohlcv.copy()
    ohlcv[-1, :, :4] *= 1.2
    moved = latest_inputs(bundle, dataclasses.replace(m, ohlcv=ohlcv))
    assert torch.equal(base.windows[:, :-1], moved.windows[:, :-1])
    assert not torch.equal(base.windows[:, -1], moved.windows[:, -1])
    assert len(decide(bundle, moved)) == len(bundle.symbols)


def test_positions_change_masks_and_sizes(bundle_dir, tmp_path, capsys):
    """Held symbols may be sold (or added to) but not bought again; flat ones not sold; sizes follow the
    account's equity; no cash, no buying."""
    bundle = load_bundle(bundle_dir)
    m = market(bundle_dir)
    close, tradable = m.ohlcv[-1, :, 3], m.tradable[-1]
    held = [int(i) for i in np.flatnonzero(tradable)[:2]]
    rows = [{"symbol": bundle.symbols[i], "shares": 10, "entry_price": float(close[i]) / 2} for i in held]
    cash = 50_000.0
    path = tmp_path / "positions.json"
    path.write_text(json.dumps({"cash": cash, "positions": rows}))
    result = act(bundle_dir, bundle_dir / "canonical", positions=path)
    equity = cash + sum(10 * close[i] for i in held)
    d = result["directive"]
    alloc = equity * d["risk_multiplier"] * d["position_cap"]
    buys = {"BUY_SMALL", "BUY_MEDIUM", "BUY_LARGE"}
    fraction = dict(zip(("BUY_SMALL", "BUY_MEDIUM", "BUY_LARGE"), bundle.cfg.env.buy_fractions, strict=True))
    for i, o in enumerate(result["orders"]):
        assert o["action"] in o["allowed"]
        if i in held:
            assert {"SELL_PARTIAL", "SELL_ALL"} <= set(o["allowed"]) and not buys & set(o["allowed"])
        else:
            assert not {"SELL_PARTIAL", "SELL_ALL", "ADD_TO_WINNER"} & set(o["allowed"])
        assert o["buy_notional"] == pytest.approx(fraction.get(o["action"], 0.0) * alloc, abs=0.01)
    # the same account through the CLI, as CSV; without cash nothing can be bought
    csv_path = tmp_path / "positions.csv"
    lines = ["symbol,shares,entry_price", *(f"{r['symbol']},{r['shares']},{r['entry_price']}" for r in rows)]
    csv_path.write_text("\n".join([*lines, "CASH,0,"]) + "\n")
    args = ["act", "--model", str(bundle_dir), "--data", str(bundle_dir / "canonical"), "--positions"]
    assert main([*args, str(csv_path)]) == 0
    broke = json.loads(capsys.readouterr().out)["orders"]
    assert all(not buys & set(o["allowed"]) for o in broke)
    assert all({"SELL_PARTIAL", "SELL_ALL"} <= set(broke[i]["allowed"]) for i in held)
    csv_path.write_text("symbol,shares,entry_price\nNOPE,1,1\nCASH,1,\n")
    assert main([*args, str(csv_path)]) == 2
    assert "positions.csv: row 2: unknown symbol 'NOPE'" in capsys.readouterr().err


def test_the_warm_decider_is_the_reference_decision_on_a_trained_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    inputs = latest_inputs(bundle, market(bundle_dir))
    fast = Decider(bundle).decide(inputs)
    ref = decide(bundle, inputs)
    assert [(o["action"], o["allowed"], o["directive"]) for o in fast] == [
        (o["action"], o["allowed"], o["directive"]) for o in ref
    ]
    np.testing.assert_allclose([o["probability"] for o in fast], [o["probability"] for o in ref], atol=1e-5)


def truncated_canonical(src: Path, dst: Path, drop: int) -> Path:
    """The canonical folder ``src`` without its newest ``drop`` bars (the history a bar earlier)."""
    data = read_canonical(src)
    keep = data.timestamps[:-drop]
    cut = lambda frame: None if frame is None else frame[frame["timestamp"].isin(keep)].reset_index(drop=True)  # noqa: E731
    meta = {k: v for k, v in data.meta.items() if k != "fingerprint"} | {"num_bars": len(keep)}
    write_canonical(dst, cut(data.bars), cut(data.benchmark), cut(data.exogenous), meta)
    return dst


def test_a_state_file_holds_the_masters_directive_from_one_call_to_the_next(bundle_dir, tmp_path, capsys):
    bundle = load_bundle(bundle_dir)
    assert bundle.cfg.env.master.interval > 1
    earlier = truncated_canonical(bundle_dir / "canonical", tmp_path / "earlier", 1)
    state = tmp_path / "desk.json"
    first = act(bundle_dir, earlier, state=state)  # no state yet: a master bar
    saved = json.loads(state.read_text())
    assert (saved["timestamp"], saved["directive"]) == (first["timestamp"], first["directive"]["index"])
    second = act(bundle_dir, bundle_dir / "canonical", state=state)  # the next bar: the directive holds
    assert second["directive"] == first["directive"]
    ref = decide(bundle, latest_inputs(bundle, market(bundle_dir)), hold=MasterHold(saved["directive"], 1))
    assert [(o["action"], o["allowed"]) for o in second["orders"]] == [
        (o["action"], o["allowed"]) for o in ref
    ]
    assert json.loads(state.read_text()) == saved  # the master did not act: same state
    args = ["act", "--model", str(bundle_dir), "--data", str(earlier), "--state", str(state)]
    for text, problem in (
        ("{not json", "not a state file"),
        (json.dumps({**saved, "model": "models:/other@champion"}), "state of model 'models:/other@champion'"),
        (json.dumps({**saved, "directive": 999}), "directive 999 outside the model's grid"),
    ):
        state.write_text(text)
        assert main(args) == 2
        assert problem in capsys.readouterr().err


def relabelled_canonical(src: Path, dst: Path, **meta) -> Path:
    """The canonical folder ``src`` with meta.json saying other things about the same bars."""
    data = read_canonical(src)
    keep = {k: v for k, v in data.meta.items() if k != "fingerprint"} | meta
    write_canonical(dst, data.bars, data.benchmark, data.exogenous, keep)
    return dst


@pytest.mark.parametrize(
    ("meta", "said"),
    [
        ({"freq": "1h", "bar_seconds": 3600}, "bar frequency '1h' differs from the model's '1D'"),
        ({"calendar": "XNYS"}, "calendar 'XNYS' differs from the model's None"),
    ],
)
def test_data_of_another_frequency_or_calendar_is_refused(bundle_dir, tmp_path, capsys, meta, said):
    assert load_bundle(bundle_dir).data_meta["freq"] == "1D"  # the bundle records what it was trained on
    data = relabelled_canonical(bundle_dir / "canonical", tmp_path / "other", **meta)
    for command in (["act"], ["evaluate", "--out", str(tmp_path / "eval")]):
        assert main([*command, "--model", str(bundle_dir), "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hmarl: error: ") and said in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()
