"""The master agent and the train_master step on a tiny crash-regime market built by the real upstream
steps: the network and observation, MAPPO vs IPPO critics, outputs, determinism, exact resume, the
divergence guards (last good checkpoint kept), bad inputs and the telemetry names."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from hmarl.agents.master import MasterAgent, benchmark_table, master_observation, obs_width
from hmarl.agents.master_params import MasterConfig
from hmarl.agents.saved import load_agent
from hmarl.agents.saved_master import load_master
from hmarl.env.actions import grid_size
from hmarl.errors import DataError
from hmarl.io import read_json
from hmarl.learners.agent_folder import load_symbol_agents
from hmarl.learners.checkpoint import CheckpointStore
from hmarl.learners.master_stage import run_key
from hmarl.learners.master_trainer import MasterDivergence, train
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, build_upstream, market_config  # noqa: E402

SYMBOLS = [*AGENT, "ppo.total_steps=64"]
MASTER = [
    "master.hidden=[32,16]",
    "master.num_envs=4",
    "master.num_steps=16",
    "master.total_steps=64",
    "master.eval_envs=2",
]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, str]:
    return master_upstream(tmp_path_factory.mktemp("upstream"))


def master_upstream(root: Path) -> dict[str, str]:
    """Upstream outputs of a crash-regime market plus briefly trained symbol agents."""
    up = build_upstream(root, market_config(TINY, "regime"))
    cfg = market_config(TINY, "regime", *SYMBOLS, f"ppo.checkpoint_dir={root / 'ck'}")
    execute("train_symbols", cfg, up, {"model": str(root / "symbols")})
    return {**up, "symbols": str(root / "symbols")}


def config(tmp_path: Path, *extra: str):
    return market_config(
        TINY, "regime", *SYMBOLS, *MASTER, f"master.checkpoint_dir={tmp_path / 'mck'}", *extra
    )


def train_step(upstream, tmp_path: Path, *extra: str, out: str = "master") -> tuple[dict, Path]:
    metrics = execute("train_master", config(tmp_path, *extra), upstream, {"model": str(tmp_path / out)})
    return metrics, tmp_path / out


def master_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "master.pt", weights_only=True)["state_dict"]


def series(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "SPS"} for r in read_json(out / "telemetry.json")["series"]]


# --------------------------------------------------------------------------- network and observation
def test_master_network_has_the_seed_shape_and_a_48_way_actor():
    m = MasterAgent(MasterConfig(), obs_dim=40, joint_dim=30, num_directives=48)
    kinds = [type(layer).__name__ for layer in m.actor]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Linear", "GELU", "Linear"]
    assert (m.actor[0].out_features, m.actor[3].out_features, m.actor[5].out_features) == (256, 128, 48)
    with torch.no_grad():
        logits, value = m(torch.randn(5, 40), torch.randn(5, 30))
    assert logits.shape == (5, 48) and value.shape == (5,)
    # near-uniform start: the actor output gain is small
    assert float(torch.softmax(logits, -1).max()) < 0.1
    ippo = MasterAgent(MasterConfig(critic="independent"), obs_dim=40, joint_dim=30, num_directives=48)
    assert ippo.critic[0].in_features == 40 and m.critic[0].in_features == 70
    # the independent critic ignores the joint state, the centralized one reads it
    obs = torch.randn(3, 40)
    torch.set_grad_enabled(False)
    assert torch.equal(ippo.value(obs, torch.zeros(3, 30)), ippo.value(obs, torch.ones(3, 30)))
    assert not torch.equal(m.value(obs, torch.zeros(3, 30)), m.value(obs, torch.ones(3, 30)))
    torch.set_grad_enabled(True)


def test_benchmark_state_is_causal():
    b = torch.linspace(100.0, 130.0, 90, dtype=torch.float64)
    t1 = benchmark_table(b, 5)
    b2 = b.clone()
    b2[50:] *= 0.5  # a crash after bar 49 changes nothing before it
    t2 = benchmark_table(b2, 5)
    assert torch.equal(t1[:50], t2[:50])
    assert float(t2[50, 2]) < -0.45 and float(t1[50, 2]) == 0.0  # drawdown from the 60-bar high
    assert abs(float(t1[10, 0]) - (float(b[10] / b[5]) - 1.0)) < 1e-6


def test_master_observation_summarizes_symbol_intents(upstream, tmp_path):
    from hmarl.agents.data import load_training_data
    from hmarl.env.vec_env import MarketEnv

    cfg = config(tmp_path)
    agent, _ = load_agent(Path(upstream["symbols"]) / "agent.pt")
    data = load_training_data(cfg, {k: Path(v) for k, v in upstream.items()})
    market = data.market(cfg, torch.device("cpu"))
    env = MarketEnv(market, cfg.env, cfg.reward, num_envs=3, min_history=cfg.features.window - 1)
    obs = env.reset(seed=1)
    s = env.num_symbols
    # all agents put their mass on BUY_SMALL where allowed
    logits = torch.full((3, s, 7), -30.0)
    logits[..., 1] = 0.0
    logp = torch.log_softmax(logits.masked_fill(~obs.mask, -1e9), -1)
    value = torch.arange(3 * s, dtype=torch.float32).view(3, s)
    bench = benchmark_table(market.benchmark, cfg.env.master.interval)
    mobs, joint = master_observation(obs, logp, value, bench)
    assert mobs.shape == (3, obs_width(market.regime.shape[1])) and joint.shape == (3, 3 * s)
    assert torch.allclose(mobs[:, :7].sum(1), torch.ones(3))  # mean action probabilities
    buy_share = obs.mask[..., 1].float().mean(1)
    assert torch.allclose(mobs[:, 15], buy_share)  # fraction whose favourite action buys
    assert torch.allclose(mobs[:, 14], value.mean(1))
    assert torch.equal(joint[:, 2 * s :], value)
    assert torch.isfinite(mobs).all()


# --------------------------------------------------------------------------- the step
def test_step_writes_master_manifest_telemetry_and_held_out_comparison(upstream, tmp_path):
    metrics, out = train_step(upstream, tmp_path)
    assert {p.name for p in out.iterdir()} >= {
        "master.pt",
        "manifest.json",
        "telemetry.json",
        "evaluation.json",
        "summary.json",
    }
    master, meta = load_master(out / "master.pt")
    assert master.num_directives == grid_size(config(tmp_path).env) == 48
    symbols_meta = load_agent(Path(upstream["symbols"]) / "agent.pt")[1]
    assert meta["symbols"] == symbols_meta["symbols"] and meta["fingerprint"] == symbols_meta["fingerprint"]
    tele = read_json(out / "telemetry.json")
    assert len(tele["series"]) == 4 == metrics["updates"]
    for row, counts in zip(tele["series"], tele["directive_counts"], strict=True):
        assert len(counts) == 48 and sum(counts) == row["master_decisions"] > 0
        assert all(k in row for k in ("loss_policy_loss", "loss_value_loss", "master_directive_entropy"))
    ev = read_json(out / "evaluation.json")
    for arm in ("master", "neutral"):
        assert 0.0 <= ev[arm]["max_drawdown"] < 1.0
    assert ev["drawdown_reduction"] == pytest.approx(
        1 - ev["master"]["max_drawdown"] / ev["neutral"]["max_drawdown"]
    )
    assert metrics["test_max_drawdown_master"] == ev["master"]["max_drawdown"]
    manifest = read_json(out / "manifest.json")
    assert manifest["critic"] == "centralized" and manifest["env_steps"] == 64


def test_same_seed_gives_identical_training_other_seed_and_ippo_differ(upstream, tmp_path):
    _, a = train_step(upstream, tmp_path / "a")
    _, b = train_step(upstream, tmp_path / "b")
    assert series(a) == series(b)
    wa, wb = master_weights(a), master_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    _, c = train_step(upstream, tmp_path / "c", "seed=5")
    assert series(c) != series(a)
    _, d = train_step(upstream, tmp_path / "d", "master.critic=independent")
    wd = master_weights(d)
    assert wd["critic.0.weight"].shape[1] < wa["critic.0.weight"].shape[1]  # IPPO: own observation only


def test_resume_from_the_last_checkpoint_ends_with_the_uninterrupted_weights(upstream, tmp_path):
    _, full = train_step(upstream, tmp_path, "master.checkpoint_every=1", out="full")
    (run_dir,) = list((tmp_path / "mck").iterdir())
    store = CheckpointStore(run_dir)
    assert store.latest_update() == 4
    # a crash after update 3's checkpoint: update 4's files were never sealed by its manifest
    (run_dir / "update_0000004" / "manifest.json").unlink()
    metrics, resumed = train_step(upstream, tmp_path, "master.checkpoint_every=1", out="resumed")
    assert metrics["resumed"] == 1.0
    wf, wr = master_weights(full), master_weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert series(full) == series(resumed)


def _direct_train(upstream, tmp_path: Path, *extra: str):
    cfg, data, symbols = load_symbol_agents(
        config(tmp_path, *extra), {k: Path(v) for k, v in upstream.items()}
    )
    market = data.market(cfg, torch.device("cpu"))
    tables = data.tables(cfg, torch.device("cpu")).restrict(*data.fold.train)
    return lambda root: train(cfg, market, tables, symbols, data.fold.train, root)


def test_exploding_value_loss_stops_the_run_and_keeps_the_last_good_checkpoint(upstream, tmp_path):
    root = tmp_path / "run"
    _direct_train(upstream, tmp_path, "master.total_steps=32")(root)
    before = (root / "update_0000002" / "rank0.pt").read_bytes()
    with pytest.raises(
        MasterDivergence,
        match=r"last good checkpoint: update 2 .*value loss .* exceeds master.max_value_loss",
    ):
        _direct_train(upstream, tmp_path, "master.max_value_loss=1e-9")(root)
    assert CheckpointStore(root).latest_update() == 2
    assert (root / "update_0000002" / "rank0.pt").read_bytes() == before


def test_non_finite_loss_stops_the_run_with_a_clear_error(upstream, tmp_path):
    with pytest.raises(MasterDivergence, match="non-finite loss"):
        _direct_train(upstream, tmp_path, "master.reward_scale=1e39")(tmp_path / "run")


def test_symbol_agents_from_other_data_are_refused_before_anything_is_written(upstream, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="agent.pt missing"):
        execute(
            "train_master",
            config(tmp_path),
            {**upstream, "symbols": str(empty)},
            {"model": str(tmp_path / "m")},
        )
    # symbol agents trained on other data: same file, another data fingerprint
    payload = torch.load(Path(upstream["symbols"]) / "agent.pt", weights_only=True)
    payload["fingerprint"] = "other-data"
    (tmp_path / "other").mkdir()
    torch.save(payload, tmp_path / "other" / "agent.pt")
    with pytest.raises(DataError, match="other-data.*rerun train_symbols"):
        execute(
            "train_master",
            config(tmp_path),
            {**upstream, "symbols": str(tmp_path / "other")},
            {"model": str(tmp_path / "m")},
        )
    assert not (tmp_path / "m").exists()


def test_tensorboard_and_mlflow_get_master_charts_and_the_directive_histogram(upstream, tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    train_step(
        upstream,
        tmp_path,
        "tracking.enabled=true",
        f"tracking.mlflow_uri={uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        f"tracking.tensorboard_dir={tmp_path / 'tb'}",
    )
    (run_dir,) = list((tmp_path / "tb" / "train_master").iterdir())
    events = EventAccumulator(str(run_dir)).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "charts/master_reward_mean",
        "charts/master_directive_entropy",
        "charts/master_risk_mean",
        "charts/master_SPS",
        "losses/master_policy_loss",
        "losses/master_value_loss",
    ):
        assert tag in scalars, tag
    assert "charts/master_directive" in events.Tags()["histograms"]
    assert len(events.Scalars("charts/master_reward_mean")) == 4
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hmarl").experiment_id])
    assert "charts/master_reward_mean" in run.data.metrics and "final/drawdown_reduction" in run.data.metrics
    assert "master/master.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "master")}


# --------------------------------------------------------------------------- alternating rounds, DDP
ROUND = [
    "master.alternating_rounds=1",
    "master.finetune_symbol_steps=32",
    "master.finetune_master_steps=32",
    "master.checkpoint_every=1",
    "ppo.checkpoint_every=1",  # the symbol fine-tuning's checkpoints
]


def symbol_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_symbol_trainer_applies_a_director_where_the_master_is_due(upstream, tmp_path):
    from hmarl.learners.distributed import DistInfo
    from hmarl.learners.symbol_trainer import train as train_symbols

    cfg, data, agent = load_symbol_agents(
        config(tmp_path, "ppo.total_steps=16"), {k: Path(v) for k, v in upstream.items()}
    )
    init = agent.state_dict()
    chosen = 0  # the most restrictive directive: risk 0.5, cap 0.01, defensive

    def directed(agent, tables, gen):
        return lambda obs: torch.full((obs.bar.shape[0],), chosen, dtype=torch.long)

    train_symbols(cfg, data, DistInfo(), tmp_path / "directed", init_state=init, directed=directed)
    train_symbols(cfg, data, DistInfo(), tmp_path / "plain", init_state=init)
    env_directed = CheckpointStore(tmp_path / "directed").load_latest()["env"]
    env_plain = CheckpointStore(tmp_path / "plain").load_latest()["env"]
    assert (env_directed["directive"] == chosen).all()
    assert (env_plain["directive"] != chosen).all()  # the env's default directive otherwise


def test_alternating_round_writes_fine_tuned_agents_and_resumes_mid_round(upstream, tmp_path):
    metrics, full = train_step(upstream, tmp_path, *ROUND, out="full")
    agent, meta = load_agent(full / "symbols" / "agent.pt")  # train_symbols' format
    given = symbol_weights(Path(upstream["symbols"]) / "agent.pt")
    tuned = symbol_weights(full / "symbols" / "agent.pt")
    assert same(agent.state_dict(), tuned) and not same(given, tuned)
    _, given_meta = load_agent(Path(upstream["symbols"]) / "agent.pt")
    for key in ("fingerprint", "symbols", "fold", "feature_names"):
        assert meta[key] == given_meta[key]
    # the fine-tuned agents are the symbol agents of this master: train_master accepts them as input
    load_symbol_agents(
        config(tmp_path), {**{k: Path(v) for k, v in upstream.items()}, "symbols": full / "symbols"}
    )
    tele = read_json(full / "telemetry.json")
    assert [r["round"] for r in tele["series"]] == [0.0] * 4 + [1.0] * 2
    assert len(read_json(full / "symbols" / "telemetry.json")["series"]) == 2
    ev = read_json(full / "evaluation.json")
    assert {"master", "neutral", "neutral_pretrained"} <= ev.keys()
    assert metrics["alternating_rounds"] == 1.0 and metrics["symbol_finetune_env_steps"] == 32
    assert metrics["env_steps"] == 64 + 32 and metrics["updates"] == 6
    # the rounds are part of the run key
    (run_dir,) = list((tmp_path / "mck").iterdir())
    cfg, data, _ = load_symbol_agents(config(tmp_path), {k: Path(v) for k, v in upstream.items()})
    assert (
        read_json(full / "manifest.json")["run_key"]
        == run_dir.name
        != run_key(cfg, data, Path(upstream["symbols"]))
    )

    # killed during the round's symbol fine-tuning: its first update stands, the round's master never ran
    store = CheckpointStore(run_dir / "round_1" / "symbols")
    assert store.latest_update() == 2
    (store.root / "update_0000002" / "manifest.json").unlink()  # update 2 never sealed
    shutil.rmtree(run_dir / "round_1" / "master")
    metrics, resumed = train_step(upstream, tmp_path, *ROUND, out="resumed")
    assert metrics["resumed"] == 1.0
    assert same(master_weights(full), master_weights(resumed))
    assert same(tuned, symbol_weights(resumed / "symbols" / "agent.pt"))
    assert series(full) == series(resumed)


def test_ddp_on_two_gloo_processes_keeps_master_replicas_identical(upstream, tmp_path):
    metrics, out = train_step(upstream, tmp_path, "master.world_size=2", "device=cpu", *ROUND)
    assert metrics["env_steps"] == 96 and read_json(out / "manifest.json")["world_size"] == 2
    (run_dir,) = list((tmp_path / "mck").iterdir())
    for phase, update, key in (
        ("", 4, "master"),
        ("round_1/symbols", 2, "agent"),
        ("round_1/master", 2, "master"),
    ):
        folder = run_dir / phase / f"update_{update:07d}"
        ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert same(ranks[0][key], ranks[1][key]), phase  # replicas identical after training
        # each rank stepped its own envs (its own seed)
        assert not torch.equal(ranks[0]["env"]["_account"], ranks[1]["env"]["_account"]), phase
    final = torch.load(folder / "rank0.pt", weights_only=True)["master"]
    assert same(final, master_weights(out))
    # and training moves the shared weights
    before = torch.load(run_dir / "update_0000003" / "rank0.pt", weights_only=True)["master"]
    after = torch.load(run_dir / "update_0000004" / "rank0.pt", weights_only=True)["master"]
    assert not same(before, after)
