"""The warm decision path (:class:`hmarl.serve.decider.Decider`) is the reference decision (:func:`hmarl.serve.decision.decide`)
at the full profile's model sizes, bar after bar, on one or two threads, for flat and holding accounts;
the encoder's inference forward is the branch's; positions files are read strictly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hmarl.agents import int8_heads
from hmarl.agents.hierarchy import Hierarchy
from hmarl.agents.int8_heads import Int8Heads, int8_weights
from hmarl.config import load_config
from hmarl.encoders.inference import transformer_complete, transformer_forward, transformer_prefix
from hmarl.encoders.model import SharedEncoder
from hmarl.env.actions import default_directive, grid_size
from hmarl.errors import DataError
from hmarl.serve.decider import Decider
from hmarl.serve.decision import MasterHold, decide
from hmarl.serve.positions import Account, read_positions

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("act_latency", ROOT / "bench" / "act_latency.py")
act_latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(act_latency)


def assert_same_orders(fast: list[dict], ref: list[dict]) -> None:
    assert [o["symbol"] for o in fast] == [o["symbol"] for o in ref]
    for f, r in zip(fast, ref, strict=True):
        assert (f["action"], f["allowed"], f["directive"]) == (r["action"], r["allowed"], r["directive"])
        assert f["probability"] == pytest.approx(r["probability"], abs=1e-5)
        assert f["buy_notional"] == pytest.approx(r["buy_notional"], abs=0.01)
        assert f["sell_fraction"] == r["sell_fraction"]


@pytest.fixture(scope="module")
def full():
    """Full-profile model sizes (all four encoder branches), 24 symbols, 7 consecutive newest bars (the
    master acts every 5)."""
    return act_latency.full_bundle("full", bars=7, symbols=24)


def holding(bundle, inputs, cash: float) -> Account:
    """Positions in every third symbol, half of them bought at half the newest close (winners)."""
    close = inputs.market.table[1, inputs.market.num_bars - 2].numpy()
    shares = np.zeros(len(bundle.symbols))
    shares[::3] = 10.0
    entry = np.where(np.arange(len(shares)) % 2 == 0, 0.5, 1.2) * close * (shares > 0)
    return Account(cash, shares, entry, "test account")


@pytest.mark.parametrize("threads", [1, 2])
def test_decider_is_the_reference_decision_bar_after_bar(full, threads, monkeypatch):
    """A desk's loop (decide, prepare, next bar): each prepared prefix is used; the master acts at the first
    bar and again ``interval`` bars later (seeing the intents under the held directive), the directive
    holds in between; deciding a bar again for another account starts from what held before it. Same
    orders as the reference computation given the same hold."""
    bundle, bars = full
    interval = bundle.cfg.env.master.interval
    decider = Decider(bundle, threads=threads)
    computed = []
    monkeypatch.setattr(decider, "_prefix", lambda older, f=decider._prefix: computed.append(1) or f(older))
    master = None  # (bar, directive) of the master's last decision
    for i, inputs in enumerate(bars):
        hold = None if master is None else MasterHold(master[1], i - master[0])
        assert decider.hold_for(inputs.market) == hold
        before = len(computed)
        fast = decider.decide(inputs)
        assert_same_orders(fast, decide(bundle, inputs, hold=hold))
        assert len(computed) == before + (i == 0)  # bars after the first use the prepared prefix
        if hold is None or hold.elapsed >= interval:
            master = (i, fast[0]["directive"]["index"])
        else:
            assert fast[0]["directive"]["index"] == hold.directive
        account = holding(bundle, inputs, cash=20_000.0)
        other = decider.decide(inputs, account)  # the prefix prepared is the next bar's: recomputed
        assert_same_orders(other, decide(bundle, inputs, account, hold=hold))
        assert other != fast  # the account matters, and does not stick to the Decider
        assert_same_orders(decider.decide(inputs), fast)
        decider.prepare()
    assert master[0] == interval  # bars 1 .. interval - 1 held the first directive
    assert decider.hold_for(bars[0].market) is None  # a history without the master's bar: afresh


@pytest.mark.parametrize("keep", [True, False])
def test_a_master_bar_where_the_master_keeps_or_changes_the_directive(full, keep, monkeypatch):
    """A kept directive reuses the intents the master read (one actor pass), a new one runs the agents again
    under it (two); the orders are the reference's either way."""
    bundle, bars = full
    grid = grid_size(bundle.cfg.env)
    standing = default_directive(bundle.cfg.env)  # in force at a bar without history
    target = standing if keep else (standing + 1) % grid

    def forced(obs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full(obs.shape[:1], target), grid).float()

    monkeypatch.setattr(bundle.master, "logits", forced)
    decider = Decider(bundle, threads=1)
    passes = []
    monkeypatch.setattr(decider, "actor", lambda h, f=decider.actor: passes.append(1) or f(h))
    fast = decider.decide(bars[0])
    assert fast[0]["directive"]["index"] == target
    assert len(passes) == (1 if keep else 2)
    assert_same_orders(fast, decide(bundle, bars[0]))


@pytest.mark.parametrize("keep", [True, False])
def test_the_decision_is_the_hierarchy_reapplying_the_directive_and_running_the_agents_again(
    full, keep, monkeypatch
):
    """Hierarchy.decide's shortcut (a kept directive is not re-applied and the intents the master read are the
    orders) against the plain composition: the master's director, the directive applied, the symbol
    agents run again under it."""
    bundle, bars = full
    grid = grid_size(bundle.cfg.env)
    standing = default_directive(bundle.cfg.env)
    target = standing if keep else (standing + 1) % grid

    def forced(obs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full(obs.shape[:1], target), grid).float()

    monkeypatch.setattr(bundle.master, "logits", forced)
    shortcut = decide(bundle, bars[0])

    def plain(h, env, obs):  # the composition, as a method of Hierarchy
        assert bool(obs.master_due[0])
        obs = env.set_directive(h.director(greedy=True)(obs))
        return h.symbol_outputs(obs)[0], obs

    monkeypatch.setattr(Hierarchy, "decide", plain)
    reference = decide(bundle, bars[0])
    assert reference[0]["directive"]["index"] == target
    assert shortcut == reference


def test_int8_heads_run_the_kernel_and_float32_heads_the_module(full):
    """The full profile's agents have int8 heads (the kernel reads them, where it builds); float32 heads
    run as the module. Both decide as the reference computation."""
    bundle, bars = full
    decider = Decider(bundle, threads=2)
    assert isinstance(decider.actor, Int8Heads) == (int8_heads.load() is not None)
    assert isinstance(decider.critic, Int8Heads) == (int8_heads.load() is not None)
    plain, plain_bars = act_latency.full_bundle(
        "full", bars=2, symbols=24, overrides=("agent.head_weights=float32",)
    )
    assert int8_weights(plain.symbol_agent.actor.w1) is None
    other = Decider(plain, threads=2)
    assert other.actor is plain.symbol_agent.actor and other.critic is plain.symbol_agent.critic
    for inputs in plain_bars:
        hold = other.hold_for(inputs.market)
        assert_same_orders(other.decide(inputs), decide(plain, inputs, hold=hold))
        other.prepare()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_reference_decision_on_cuda_is_the_cpu_one():
    bundle, bars = act_latency.full_bundle("full", bars=2, symbols=24)
    cpu = [decide(bundle, inputs) for inputs in bars]
    bundle.to("cuda")
    assert bundle.device.type == "cuda"
    for inputs, ref in zip(bars, cpu, strict=True):
        assert_same_orders(decide(bundle, inputs), ref)


def test_a_decision_without_prepare_is_the_same(full):
    bundle, bars = full
    decider = Decider(bundle, threads=1)
    for inputs in bars:  # never prepared: each decision computes its own prefix
        hold = decider.hold_for(inputs.market)
        assert_same_orders(decider.decide(inputs), decide(bundle, inputs, hold=hold))


def test_transformer_inference_is_the_branch():
    cfg = load_config(ROOT / "params.yaml", ["profile=full"]).encoder
    for window, scales in ((24, cfg.scales), (10, [1, 3, 4]), (8, [1, 8])):  # pooled scales drop the oldest
        encoder = SharedEncoder(cfg.model_copy(update={"scales": scales}), window, 5, torch.eye(7)).eval()
        branch = encoder.branches["transformer"]
        x = torch.randn(2, 7, window, 5, generator=torch.Generator().manual_seed(window))
        with torch.inference_mode():
            torch.testing.assert_close(transformer_forward(branch, x), branch(x), atol=1e-5, rtol=1e-5)


def test_a_transformer_prefix_is_completed_by_any_newest_row_and_chains_bar_to_bar():
    cfg = load_config(ROOT / "params.yaml", ["profile=full"]).encoder
    branch = SharedEncoder(cfg, 24, 5, torch.eye(7)).eval().branches["transformer"]
    g = torch.Generator().manual_seed(1)
    bars = torch.randn(1, 7, 27, 5, generator=g)  # 4 consecutive windows of 24 bars
    with torch.inference_mode():
        state = transformer_prefix(branch, bars[:, :, :23])
        kept = [t.clone() for s in state for t in (s.q, s.k, s.v, s.a, s.lse, s.z)]
        for newest in (bars[:, :, 23:24], torch.randn(1, 7, 1, 5, generator=g)):  # two newest rows, one state
            x = torch.cat([bars[:, :, :23], newest], 2)
            torch.testing.assert_close(
                transformer_complete(branch, state, x), branch(x), atol=1e-5, rtol=1e-5
            )
        assert all(
            torch.equal(a, b)
            for a, b in zip(kept, [t for s in state for t in (s.q, s.k, s.v, s.a, s.lse, s.z)], strict=True)
        )
        for t in range(1, 4):  # the next bar's prefix from this window's newest 23 rows
            x = bars[:, :, t : t + 24]
            state = transformer_prefix(branch, x[:, :, :-1])
            torch.testing.assert_close(
                transformer_complete(branch, state, x), branch(x), atol=1e-5, rtol=1e-5
            )


# --------------------------------------------------------------------------- positions files
SYMBOLS = ["AAA", "BBB", "CCC"]


def test_positions_from_json_and_csv(tmp_path):
    doc = {"cash": 5000, "positions": [{"symbol": "BBB", "shares": 12.5, "entry_price": 40}]}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    (tmp_path / "p.csv").write_text("symbol,shares,entry_price\nBBB,12.5,40\nCASH,5000,\nCCC,0,\n")
    for name in ("p.json", "p.csv"):
        account = read_positions(tmp_path / name, SYMBOLS)
        assert account.cash == 5000.0
        np.testing.assert_array_equal(account.shares, [0.0, 12.5, 0.0])
        np.testing.assert_array_equal(account.entry, [0.0, 40.0, 0.0])


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("unknown.csv", "symbol,shares,entry_price\nZZZ,1,2\nCASH,10,\n", r"unknown.csv: row 2: unknown symbol 'ZZZ'"),
        ("neg.csv", "symbol,shares,entry_price\nAAA,1,2\nBBB,-3,2\nCASH,1,\n", r"neg.csv: row 3 \(BBB\).*'shares'.*negative"),
        ("col.csv", "symbol,qty,entry_price\nAAA,1,2\n", r"col.csv: missing column 'shares'"),
        ("nocash.csv", "symbol,shares,entry_price\nAAA,1,2\n", r"nocash.csv: no cash"),
        ("entry.csv", "symbol,shares,entry_price\nAAA,1,\nCASH,1,\n", r"entry.csv: row 2 \(AAA\).*'entry_price'"),
        ("twice.csv", "symbol,shares,entry_price\nAAA,1,2\nAAA,1,2\nCASH,1,\n", r"twice.csv: row 3.*'AAA' listed twice"),
        ("key.json", '{"cash": 1, "positions": [{"symbol": "CCC", "shares": 1}]}', r"key.json: positions\[0\] \(CCC\): missing column 'entry_price'"),
        ("bad.json", '{"cash": "lots", "positions": []}', r"bad.json: cash.*'cash' must be a finite number"),
        ("p.txt", "AAA 1 2", r"p.txt: positions file must be .json or .csv"),
    ],
)  # fmt: skip
def test_bad_positions_files_are_refused_naming_what_is_wrong(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        read_positions(tmp_path / name, SYMBOLS)
