"""The walk_forward step on a tiny two-fold market built by the real upstream steps: a fold whose models
exist is evaluated with them, another fold trains its own; the evaluated bars are unseen by every model
behind them; cost stress, buy-and-hold accounting, the SL rule and per-bar records of the simulator;
models of other data are refused."""

from __future__ import annotations

import shutil
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from hmarl.agents.saved_master import load_master
from hmarl.config import HmarlConfig
from hmarl.data.splits import folds_for
from hmarl.data.store import FeatureStore
from hmarl.env.actions import Action
from hmarl.env.market import CLOSE, OPEN, TRADABLE
from hmarl.errors import DataError
from hmarl.evaluation.backtest import backtest, sl_edge, sl_rule_policy
from hmarl.evaluation.leakage import check_unseen
from hmarl.evaluation.period import BASELINES, POLICY, PeriodEvaluation
from hmarl.evaluation.walk_forward import evaluate_period
from hmarl.io import read_json, write_json
from hmarl.learners.agent_folder import load_symbol_agents
from hmarl.runtime import torch_threads
from hmarl.sl.cache import NONE, SLCache
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, build_upstream, market_config  # noqa: E402

# two folds of 60 test bars; one cheap encoder probe (probes dominate the tiny encoder's time)
MARKET = [
    *TINY,
    "splits.n_folds=2",
    "splits.train_bars=160",
    "encoder.probe_l2=[0.01]",
    "encoder.probe_max_samples=100",
]
MODELS = [
    *AGENT,
    "ppo.total_steps=64",
    "master.hidden=[32,16]",
    "master.num_envs=4",
    "master.num_steps=16",
    "master.total_steps=64",
    "master.eval_envs=2",
    "walk_forward.eval_envs=3",
]
NO_SLIPPAGE = ["env.slippage_bps=0", "env.slippage_vol_coef=0", "env.slippage_impact_coef=0"]


def fold_config(root: Path, fold: int, *extra: str) -> HmarlConfig:
    return market_config(
        MARKET,
        "planted_alpha",
        *MODELS,
        f"ppo.checkpoint_dir={root / 'ck'}",
        f"master.checkpoint_dir={root / 'mck'}",
        f"ppo.fold={fold}",
        *extra,
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Upstream outputs, models of the last fold, and the walk_forward step run on both folds."""
    root = tmp_path_factory.mktemp("wf")
    with torch_threads(1):  # tiny models: extra threads only contend on a small CI box
        up = build_upstream(root, market_config(MARKET))
        cfg = fold_config(root, -1)
        execute("train_symbols", cfg, up, {"model": str(root / "symbols")})
        execute(
            "train_master", cfg, {**up, "symbols": str(root / "symbols")}, {"model": str(root / "master")}
        )
        inputs = {**up, "symbols": str(root / "symbols"), "master": str(root / "master")}
        metrics = {}
        for fold in (1, 0):
            metrics[fold] = execute(
                "walk_forward",
                fold_config(root, fold),
                inputs,
                {"evaluation": str(root / "wf" / f"fold_{fold}")},
                metrics_path=root / "metrics" / f"fold_{fold}.json",
            )
    return root, inputs, metrics


def period_of(root: Path, fold: int) -> PeriodEvaluation:
    return PeriodEvaluation.load(root / "wf" / f"fold_{fold}")


def models_of(root: Path, inputs: dict, fold: int, *extra: str):
    """Config, market, tables and the agents the step evaluated for ``fold`` (reloaded from disk)."""
    out = root / "wf" / f"fold_{fold}"
    sym = out / "symbols" if (out / "symbols").exists() else Path(inputs["symbols"])
    master_dir = out / "master" if (out / "master").exists() else Path(inputs["master"])
    cfg, data, symbols = load_symbol_agents(fold_config(root, fold, *extra), {**inputs, "symbols": sym})
    master, _ = load_master(master_dir / "master.pt")
    device = torch.device("cpu")
    return cfg, data, data.market(cfg, device), data.tables(cfg, device), symbols, master


# --------------------------------------------------------------------------- the step end to end
def test_the_fold_of_the_given_models_is_evaluated_with_them_on_its_test_bars(pipeline):
    root, _, metrics = pipeline
    out = root / "wf" / "fold_1"
    assert not (out / "symbols").exists() and not (out / "master").exists()
    period = period_of(root, 1)
    store = FeatureStore.load(root / "features")
    fold = folds_for(fold_config(root, 1), store.num_bars)[1]
    assert period.label == "fold_1" and period.bars == fold.test
    assert len(period.dates) == fold.test[1] - fold.test[0]
    assert period.symbols == store.symbols
    assert period.info["trained_here"] == {"symbols": False, "master": False}
    # every arm at every cost level: walk_forward.cost_bps plus the base commission
    assert sorted(period.series) == [0.0, 15.0, 30.0, 50.0] and period.cost_bps == 15.0
    for by_name in period.series.values():
        assert set(by_name) == {POLICY, *BASELINES}
    # annualization from the data's calendar (business days here), never 252
    assert period.bars_per_year == pytest.approx(store.bars_per_year) and period.bars_per_year != 252
    # the metrics are the period's, at the base cost, and land in the metrics file and summary.json
    values = period.metrics()
    for name in (POLICY, *BASELINES):
        for m in ("sharpe", "total_return", "max_drawdown"):
            assert metrics[1][f"{name}_{m}"] == pytest.approx(values[name][m], nan_ok=True)
    assert read_json(root / "metrics" / "fold_1.json")["policy_sharpe"] == pytest.approx(
        metrics[1]["policy_sharpe"]
    )
    assert read_json(out / "summary.json")["fold"] == 1.0
    # the policy's per-step action mix and per-symbol P&L returns are recorded
    t = len(period.dates) - 1
    assert period.actions.shape == (t, 7) and np.allclose(period.actions.sum(1), 1.0)
    assert period.symbol_returns.shape == (t, len(period.symbols))


def test_another_fold_trains_its_own_models_with_the_same_procedure(pipeline):
    root, _, metrics = pipeline
    out = root / "wf" / "fold_0"
    assert read_json(out / "symbols" / "manifest.json")["fold"] == 0
    assert read_json(out / "master" / "manifest.json")["fold"] == 0
    period = period_of(root, 0)
    store = FeatureStore.load(root / "features")
    assert period.bars == folds_for(fold_config(root, 0), store.num_bars)[0].test
    assert period.info["trained_here"] == {"symbols": True, "master": True}
    assert metrics[0]["trained_symbols"] == 1.0 and metrics[1]["trained_symbols"] == 0.0


def test_evaluated_bars_were_never_seen_by_the_models_behind_them(pipeline):
    root, inputs, _ = pipeline
    store = FeatureStore.load(root / "features")
    cache = SLCache.load(root / "sl_cache")
    encoder = read_json(Path(inputs["encoder"]) / "manifest.json")
    enc_source = np.load(Path(inputs["encoder"]) / "source_fold.npy")
    horizon = fold_config(root, 0).features.label_horizon
    for k in (0, 1):
        period = period_of(root, k)
        lo, hi = period.bars
        bars = set(range(lo, hi))
        fold = folds_for(fold_config(root, k), store.num_bars)[k]
        assert not bars & set(range(*fold.train)) and not bars & set(range(*fold.val))
        out = root / "wf" / f"fold_{k}"
        for role in ("symbols", "master"):
            folder = out / role if (out / role).exists() else Path(inputs[role])
            m = read_json(folder / "manifest.json")
            trained = folds_for(HmarlConfig.model_validate(m["config"]), store.num_bars)[m["fold"]]
            assert not bars & set(range(trained.train[0], trained.train[1] + horizon))
        # the SL models and encoders that produced the evaluated bars' inputs trained elsewhere
        fits = {(f["fold"], f["split"]): f["fit_ranges"] for f in cache.manifest["fits"]}
        for f, s in {
            (int(a), int(b)) for a, b in zip(cache.source_fold[lo:hi], cache.source_split[lo:hi], strict=True)
        }:
            assert f != NONE
            assert all(not bars & set(range(a, b + horizon)) for a, b in fits[(f, s)])
        for fit in encoder["fits"]:
            if fit["fold"] in set(enc_source[lo:hi].tolist()):
                assert all(not bars & set(range(a, b + horizon)) for a, b in fit["fit_ranges"])
        # the step recorded what it checked, and it is disjoint too
        assert period.info["training_ranges"]
        for ranges in period.info["training_ranges"].values():
            assert all(b <= lo or a >= hi for a, b in ranges)


def test_an_overlap_with_training_bars_is_refused():
    check_unseen((100, 160), {"SL model fold 0 split -1": [[0, 100]]}, "fold 0")
    with pytest.raises(DataError, match=r"fold 3.*\[100, 160\).*encoder fold 2 \[150, 170\]"):
        check_unseen((100, 160), {"encoder fold 2": [[150, 170]], "ok": [[0, 90]]}, "fold 3")


@pytest.mark.parametrize("role", ["symbols", "master"])
def test_models_trained_on_other_data_are_refused_naming_the_folder(pipeline, tmp_path, role):
    root, inputs, _ = pipeline
    other = tmp_path / role
    shutil.copytree(inputs[role], other)
    manifest = read_json(other / "manifest.json")
    write_json(other / "manifest.json", {**manifest, "fingerprint": "other-data"})
    out = tmp_path / "fold_1"
    with pytest.raises(DataError, match=rf"{other}: trained on other data \(fingerprint 'other-data'"):
        execute("walk_forward", fold_config(root, 1), {**inputs, role: str(other)}, {"evaluation": str(out)})
    assert not out.exists()


# --------------------------------------------------------------------------- costs and baselines
def test_cost_stress_charges_more_at_higher_cost(pipeline):
    root, _, _ = pipeline
    period = period_of(root, 1)
    levels = sorted(period.series)
    bh = [period.metrics(c)["buy_hold"] for c in levels]
    assert all(a["costs_paid"] < b["costs_paid"] for a, b in pairwise(bh))
    assert all(a["total_return"] > b["total_return"] for a, b in pairwise(bh))
    for c in levels:  # the benchmark is the market: no costs, the same path at every level
        assert period.metrics(c)["benchmark"]["costs_paid"] == 0.0
        np.testing.assert_array_equal(period.series[c]["benchmark"].equity, period.base["benchmark"].equity)


def test_costs_are_commission_plus_slippage_and_zero_commission_costs_nothing(pipeline):
    """Without slippage the recorded cost of every bar is the commission on the recorded traded notional
    (0 at 0 bps), and each symbol's recorded P&L adds up to the account's equity change."""
    root, inputs, _ = pipeline
    cfg, data, market, tables, symbols, master = models_of(root, inputs, 1, *NO_SLIPPAGE)
    with torch_threads(1):
        period = evaluate_period(cfg, market, tables, symbols, master, data.fold.test, "fold_1")
    traded_any = False
    for level, by_name in period.series.items():
        fee = level / 2 / 1e4
        for name, s in by_name.items():
            notional = s.turnover * s.equity[:-1]
            np.testing.assert_allclose(
                s.costs, fee * notional, rtol=1e-9, atol=1e-6, err_msg=f"{name} {level}"
            )
            if level == 0.0:
                assert s.costs.sum() == 0.0, name
            traded_any |= name == POLICY and notional.sum() > 0
    assert traded_any
    policy = period.base[POLICY]
    np.testing.assert_allclose(
        period.symbol_returns.sum(1), policy.equity[1:] / policy.equity[:-1] - 1.0, rtol=1e-9, atol=1e-12
    )
    assert ((policy.exposure >= 0) & (policy.exposure <= 1.0 + 1e-9)).all()


def test_buy_and_hold_is_the_equal_weight_path_less_its_entry_costs(pipeline):
    """Equal notionals of every tradable symbol bought at the first fill bar's open, held to the end: with
    commission ``fee`` per leg (no slippage) the path is the costless equal-weight path x 1 / (1 + fee)."""
    root, inputs, _ = pipeline
    cfg, data, market, tables, symbols, master = models_of(root, inputs, 1, *NO_SLIPPAGE)
    lo, hi = data.fold.test
    entry = market.table[OPEN, lo + 1].double().numpy()
    held = market.table[TRADABLE, lo + 1].numpy() > 0
    close = market.table[CLOSE, lo + 1 : hi].double().numpy()
    cash = cfg.env.initial_cash
    costless = cash * (close[:, held] / entry[held]).mean(1)  # the closes-based equal-weight path
    with torch_threads(1):
        period = evaluate_period(cfg, market, tables, symbols, master, (lo, hi), "fold_1")
    for level, by_name in period.series.items():
        fee = level / 2 / 1e4
        bh = by_name["buy_hold"]
        assert bh.equity[0] == cash
        np.testing.assert_allclose(bh.equity[1:], costless / (1.0 + fee), rtol=1e-10)
        assert bh.costs[0] == pytest.approx(cash * fee / (1.0 + fee), rel=1e-9, abs=1e-9)
        assert (bh.costs[1:] == 0).all() and (bh.turnover[1:] == 0).all()
        np.testing.assert_allclose(bh.exposure, 1.0, rtol=1e-9)
    # with the default slippage model the entry costs more than the commission alone
    bh = period_of(root, 1).base["buy_hold"]
    assert bh.costs[0] > cash * 0.00075 / 1.00075 and (bh.equity[1:] < costless).all()


def test_the_sl_rule_buys_on_up_and_sells_everything_on_down(pipeline):
    root, inputs, _ = pipeline
    cfg, data, market, tables, _, _ = models_of(root, inputs, 1)
    lo, hi = data.fold.test
    rule = tables.restrict(lo, hi)
    edge = sl_edge(rule.sl).numpy()[:-1]  # the edge each step decides on
    with torch_threads(1):
        bt = backtest(market, cfg, (lo, hi), sl_rule_policy(rule), 1, cfg.seed)
    executed = bt.executed[:, 0].astype(int)
    holding = bt.holding[:-1, 0]
    tradable_next = market.table[TRADABLE, lo + 1 : hi].numpy() > 0
    buys = np.isin(executed, [Action.BUY_SMALL, Action.BUY_MEDIUM, Action.BUY_LARGE])
    assert buys.any() and (edge[buys] > 0).all() and not holding[buys].any()
    sells = executed == Action.SELL_ALL
    assert sells.any() and (edge[sells] < 0).all()
    # every held, tradable position facing a down call is sold in full; nothing else is ever done
    np.testing.assert_array_equal(sells, holding & (edge < 0) & tradable_next)
    assert not np.isin(executed, [Action.SELL_PARTIAL, Action.ADD_TO_WINNER]).any()


def test_the_evaluation_is_reproducible_from_the_saved_models(pipeline):
    """Same params, seed and models: the same series, bit for bit, as the step saved."""
    root, inputs, _ = pipeline
    cfg, data, market, tables, symbols, master = models_of(root, inputs, 1)
    with torch_threads(1):
        again = evaluate_period(cfg, market, tables, symbols, master, data.fold.test, "fold_1")
    saved = period_of(root, 1)
    for level, by_name in saved.series.items():
        for name, s in by_name.items():
            np.testing.assert_array_equal(
                again.series[level][name].equity, s.equity, err_msg=f"{name} {level}"
            )
    np.testing.assert_array_equal(again.actions, saved.actions)
    np.testing.assert_array_equal(again.symbol_returns, saved.symbol_returns)


def test_hourly_bars_are_annualized_from_their_own_calendar(tmp_path):
    """Intraday data: the period's bars_per_year comes from the data (7 hourly bars a session), never 252,
    and the Sharpe in the metrics is annualized with it."""
    cfg = market_config(
        [*TINY, "synthetic.freq=1h"],
        "planted_alpha",
        *MODELS,
        f"ppo.checkpoint_dir={tmp_path / 'ck'}",
        f"master.checkpoint_dir={tmp_path / 'mck'}",
    )
    with torch_threads(1):
        up = build_upstream(tmp_path, cfg)
        models = {**up, "symbols": str(tmp_path / "symbols"), "master": str(tmp_path / "master")}
        execute("train_symbols", cfg, up, {"model": models["symbols"]})
        execute("train_master", cfg, {**up, "symbols": models["symbols"]}, {"model": models["master"]})
        metrics = execute("walk_forward", cfg, models, {"evaluation": str(tmp_path / "wf")})
    period = PeriodEvaluation.load(tmp_path / "wf")
    derived = read_json(tmp_path / "canonical" / "meta.json")["bars_per_year"]  # ingest: from the calendar
    assert period.bars_per_year == pytest.approx(derived)
    assert period.bars_per_year == pytest.approx(7 * 365.25 * 5 / 7, rel=0.02)  # 7 bars a session
    r = np.diff(period.base[POLICY].equity) / period.base[POLICY].equity[:-1]
    expected = r.mean() / r.std(ddof=1) * np.sqrt(period.bars_per_year) if r.std() > 0 else 0.0
    assert metrics["policy_sharpe"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_cash_rate_passive_baselines_and_a_missing_benchmark(pipeline, tmp_path):
    """Idle cash earns env.cash_rate in every simulated arm and the period records it as its risk-free rate;
    the passive rules run on the same bars; data without a benchmark gets no benchmark series, never a
    stand-in."""
    import dataclasses

    root, inputs, _ = pipeline
    cfg, data, market, tables, symbols, master = models_of(root, inputs, 1, "env.cash_rate.annual=0.04")
    lo, hi = data.fold.test
    bare = dataclasses.replace(market, has_benchmark=False)
    with torch_threads(1):
        period = evaluate_period(cfg, bare, tables, symbols, master, (lo, hi), "fold_1")
    base = period.base
    assert "benchmark" not in base and period.info["benchmark"].startswith("absent")
    assert {"vol_target", "trend_filter"} <= set(base) and set(base) == {POLICY, *BASELINES} - {"benchmark"}
    np.testing.assert_allclose(period.risk_free, 0.04 / market.bars_per_year)
    assert period.risk_free_label == "constant 0.04 a year"
    # the policy holds some cash all the time: with the rate it ends higher than without, by the interest
    without = period_of(root, 1).base[POLICY]
    assert base[POLICY].equity[-1] > without.equity[-1]
    for name in ("vol_target", "trend_filter"):
        s = base[name]
        assert s.equity.shape == without.equity.shape and (s.exposure <= 1.0 + 1e-9).all()
    period.save(tmp_path / "p")
    back = PeriodEvaluation.load(tmp_path / "p")
    np.testing.assert_array_equal(back.risk_free, period.risk_free)
    assert back.risk_free_label == period.risk_free_label and "benchmark" not in back.base
    # metrics are in excess of the rate
    r = np.diff(base[POLICY].equity) / base[POLICY].equity[:-1] - period.risk_free
    sharpe = r.mean() / r.std(ddof=1) * np.sqrt(period.bars_per_year)
    assert back.metrics()[POLICY]["sharpe"] == pytest.approx(sharpe, rel=1e-9)
