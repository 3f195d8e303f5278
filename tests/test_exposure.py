"""Where the capital goes (evaluation/exposure.py): the exposure decomposition and the decision funnel of a
backtest, on policies whose answer is known, and the report section that shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from env_fixtures import make_store
from hmarl.config import build_config
from hmarl.env.actions import Action, decode_directive, default_directive
from hmarl.env.market import MarketData
from hmarl.evaluation.backtest import backtest
from hmarl.evaluation.exposure import FIELDS, exposure_funnel

REPO = Path(__file__).resolve().parents[1]
SYMBOLS, BARS = 6, (20, 120)


def _setup(*overrides: str):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = build_config(raw, ["tracking.enabled=false", *overrides])
    market = MarketData.from_store(make_store(num_bars=120, num_symbols=SYMBOLS, seed=3), cfg.env)
    return cfg, market


def _constant(action: Action, first_only: bool = False):
    calls = {"n": 0}

    def act(obs):
        shape = obs.mask.shape[:2]
        a = action if (calls["n"] == 0 or not first_only) else Action.HOLD
        calls["n"] += 1
        return torch.full(shape, int(a), dtype=torch.int64)

    return act


def test_cash_only_policy_has_no_exposure_and_only_hold_picks():
    cfg, market = _setup()
    f = exposure_funnel(backtest(market, cfg, BARS, _constant(Action.HOLD), 2, 0), market, cfg, BARS)
    assert set(FIELDS) == set(f)
    assert f["exposure"] == 0 and f["held_symbols"] == 0 and f["slot_use"] == 0 and f["sizing"] == 0
    assert f["pick_hold"] == 1 and f["masked"] == 0 and f["forced_hold"] == 0
    # the neutral directive's room: open limit x cap x risk, capped at a fully invested account
    risk, cap, mode = decode_directive(cfg.env, default_directive(cfg.env))
    m = cfg.env.master
    limit = min(SYMBOLS, max(1, round(m.max_open_fraction[mode] * SYMBOLS)))
    assert f["ceiling"] == pytest.approx(min(1.0, limit * m.position_caps[cap] * m.risk_multipliers[risk]))


def test_one_large_buy_then_hold_fills_the_slots_at_the_buy_fraction():
    """BUY_LARGE on every symbol at the first bar, then HOLD: each open slot holds ~75 % of its allowed
    allocation (drifting with prices), positions last to the end, one pick in T is a buy."""
    cfg, market = _setup("env.master.default=[3,3,2]")  # aggressive: every symbol may be held
    bt = backtest(market, cfg, BARS, _constant(Action.BUY_LARGE, first_only=True), 1, 0)
    f = exposure_funnel(bt, market, cfg, BARS)
    steps = BARS[1] - BARS[0] - 1
    assert f["slot_use"] == pytest.approx(1.0)
    assert f["held_symbols"] == pytest.approx(SYMBOLS)
    assert f["sizing"] == pytest.approx(cfg.env.buy_fractions[2], rel=0.15)
    assert f["pick_buy"] == pytest.approx(1 / steps)
    assert f["holding_bars"] == pytest.approx(steps)
    # the identity, bar by bar: exposure = slot_use x room x sizing (here room = 6 x 2 %)
    assert f["exposure"] == pytest.approx(f["slot_use"] * SYMBOLS * 0.02 * f["sizing"], rel=1e-6)
    assert f["exposure"] == pytest.approx(f["ceiling"] * f["ceiling_used"])


def test_repeated_buys_meet_the_masks_and_the_repetition_limit():
    """Always BUY_LARGE: once a symbol is at its allocation the buy is masked, and a fourth identical
    action in a row is forced to HOLD; both show in the funnel, and holding lasts."""
    cfg, market = _setup()
    f = exposure_funnel(backtest(market, cfg, BARS, _constant(Action.BUY_LARGE), 1, 0), market, cfg, BARS)
    assert f["pick_buy"] == 1
    assert f["masked"] + f["forced_hold"] > 0.5
    assert 0 < f["exposure"] <= f["ceiling"] + 1e-9


def test_walk_forward_report_shows_the_section():
    from eval_fixtures import make_folds
    from hmarl.evaluation.aggregate import aggregate
    from hmarl.evaluation.outputs import evaluation_result
    from hmarl.evaluation.report import render_markdown

    folds = make_folds(2, 60)
    for i, p in enumerate(folds):
        p.info["exposure"] = {"policy": {"exposure": 0.1 * (i + 1), "ceiling": 1.0}}
    cfg = build_config(yaml.safe_load((REPO / "params.yaml").read_text()), ["tracking.enabled=false"])
    agg = aggregate(folds, cfg)
    assert [(r["period"], r["arm"], r["exposure"]) for r in agg.exposure] == [
        (folds[0].label, "policy", 0.1),
        (folds[1].label, "policy", 0.2),
    ]
    md = render_markdown(evaluation_result(agg, "t"))
    assert "## Where the capital goes" in md and "0.2" in md.split("## Where the capital goes")[1]
    assert np.isfinite([r["exposure"] for r in agg.exposure]).all()
