"""The train_symbols step on a tiny market built by the real upstream steps: outputs, determinism, exact
resume after SIGKILL, stale-run protection, bad inputs, DDP on 2 gloo processes, telemetry names, the
smoke run's anti-collapse figures, and the agent options (warm start, curriculum, shared head, fine-tuning)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hmarl.agents.data import load_training_data
from hmarl.agents.int8_heads import int8_weights, rounded
from hmarl.agents.saved import load_agent
from hmarl.config import ConfigError
from hmarl.errors import DataError
from hmarl.io import read_json, write_json
from hmarl.learners.checkpoint import CheckpointStore
from hmarl.learners.stage_config import symbol_stage_config
from hmarl.learners.symbol_stage import run_key
from hmarl.learners.symbol_trainer import TIMING_KEYS, build_agent
from hmarl.learners.telemetry import MANDATORY
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, UPSTREAM, build_upstream, market_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, str]:
    return build_upstream(tmp_path_factory.mktemp("upstream"), market_config(TINY))


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        *AGENT,
        f"ppo.checkpoint_dir={tmp_path / 'checkpoints'}",
        "ppo.total_steps=64",
        "ppo.checkpoint_every=2",
        *extra,
    ]


def train(upstream, tmp_path: Path, *extra: str, out: str = "symbols") -> tuple[dict, Path]:
    cfg = market_config(overrides(tmp_path, *extra))
    metrics = execute("train_symbols", cfg, upstream, {"model": str(tmp_path / out)})
    return metrics, tmp_path / out


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "agent.pt", weights_only=True)["state_dict"]


def series(model_dir: Path) -> list[dict]:
    """Per-update telemetry without the wall-clock figures."""
    rows = read_json(model_dir / "telemetry.json")["series"]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def saved_from(state: dict) -> dict:
    """The saved agent's weights from the last checkpoint's: its heads rounded to int8 (the default)."""
    return {k: rounded(v) if k in ("actor.w1", "critic.w1") else v for k, v in state.items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- outputs
def test_step_writes_the_agent_manifest_telemetry_and_a_held_out_backtest(upstream, tmp_path):
    metrics, out = train(upstream, tmp_path)
    assert metrics["env_steps"] == 64 and metrics["updates"] == 4
    for key in MANDATORY:
        assert key in metrics
    agent, meta = load_agent(out / "agent.pt")  # torch.load(weights_only=True) inside
    store_meta = read_json(Path(upstream["store"]) / "meta.json")
    manifest = read_json(out / "manifest.json")
    assert manifest["fingerprint"] == store_meta["fingerprint"] == meta["fingerprint"]
    assert manifest["feature_names"] == store_meta["feature_names"]
    assert manifest["env_steps"] == 64 and manifest["config"]["ppo"]["total_steps"] == 64
    rows = read_json(out / "telemetry.json")["series"]
    assert len(rows) == 4 and [r["global_step"] for r in rows] == [16, 32, 48, 64]
    assert {"policy_action_entropy_mean", "SPS", "loss_policy_loss", "component_pnl"} <= rows[0].keys()
    evaluation = read_json(out / "evaluation.json")
    fold = store_meta["folds"][-1]
    assert evaluation["bars"] == fold["test"]  # the backtest runs on the held-out bars only
    for name in ("agent", "agent_sampled", "random", "buy_hold"):
        assert isinstance(evaluation[name]["sharpe"], float)
    # int8 heads (the default): the saved agent is on the grid, agreement with float32 is measured held out
    assert int8_weights(agent.actor.w1) is not None and int8_weights(agent.critic.w1) is not None
    assert 0.5 < evaluation["int8_action_agreement"] <= 1.0
    assert metrics["int8_action_agreement"] == evaluation["int8_action_agreement"]
    # resume checkpoints live outside the outputs, keyed by the run
    key = manifest["run_key"]
    assert CheckpointStore(tmp_path / "checkpoints" / key).latest_update() == 4
    assert sorted(p.name for p in out.iterdir()) == [
        "agent.pt",
        "evaluation.json",
        "manifest.json",
        "summary.json",
        "telemetry.json",
    ]


def test_same_seed_gives_identical_metrics_and_weights_other_seed_differs(upstream, tmp_path):
    _, a = train(upstream, tmp_path / "a")
    _, b = train(upstream, tmp_path / "b")
    _, c = train(upstream, tmp_path / "c", "seed=43")
    assert series(a) == series(b)
    assert same_weights(weights(a), weights(b))
    assert not same_weights(weights(a), weights(c))


# --------------------------------------------------------------------------- resume
def _cli(tmp_path: Path, upstream: dict, out: Path, ckpt: Path, extra: list[str]) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    args = [
        sys.executable,
        "-m",
        "hmarl.cli",
        "step",
        "train_symbols",
        "--params",
        str(params),
        "--metrics",
        "-",
        "--output",
        f"model={out}",
    ]
    for k, v in upstream.items():
        args += ["--input", f"{k}={v}"]
    for o in [*UPSTREAM, *overrides(tmp_path, f"ppo.checkpoint_dir={ckpt}", *extra)]:
        args += ["--set", o]
    return args


def test_sigkill_mid_run_then_resume_ends_with_the_uninterrupted_weights(upstream, tmp_path):
    extra = ["ppo.total_steps=1920", "ppo.checkpoint_every=3"]  # 120 updates
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    full = subprocess.run(
        _cli(tmp_path, upstream, tmp_path / "full", tmp_path / "ck_full", extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-2000:]

    ckpt = tmp_path / "ck_killed"
    args = _cli(tmp_path, upstream, tmp_path / "killed", ckpt, extra)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        sealed = [json.loads(m.read_text())["update"] for m in ckpt.glob("*/update_*/manifest.json")]
        if sealed and max(sealed) >= 6:
            proc.send_signal(signal.SIGKILL)
            killed_at = max(sealed)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (tmp_path / "killed").exists()  # the runner publishes outputs only on success

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed"] == 1.0
    assert read_json(tmp_path / "killed" / "manifest.json")["resumed_from_update"] >= killed_at
    assert same_weights(weights(tmp_path / "killed"), weights(tmp_path / "full"))
    assert series(tmp_path / "killed") == series(tmp_path / "full")


def test_a_changed_config_never_resumes_a_stale_run(upstream, tmp_path):
    cfg = market_config(overrides(tmp_path))
    data = load_training_data(cfg, {k: Path(v) for k, v in upstream.items()})
    same = market_config(overrides(tmp_path, "tracking.experiment=other", "ppo.checkpoint_dir=elsewhere"))
    changed = market_config(overrides(tmp_path, "ppo.lr=0.001"))
    assert run_key(cfg, data) == run_key(same, data)
    assert run_key(cfg, data) != run_key(changed, data)
    # rerunning a finished run resumes at its end: same result, nothing retrained
    first, out1 = train(upstream, tmp_path)
    again, out2 = train(upstream, tmp_path, out="again")
    assert first["resumed"] == 0.0 and again["resumed"] == 1.0
    assert same_weights(weights(out1), weights(out2))


def test_inputs_from_different_data_are_refused_before_anything_is_written(upstream, tmp_path):
    import shutil

    encoder = tmp_path / "encoder"
    shutil.copytree(upstream["encoder"], encoder)
    manifest = read_json(encoder / "manifest.json")
    manifest["fingerprint"] = "0" * 16
    write_json(encoder / "manifest.json", manifest)
    bad = {**upstream, "encoder": str(encoder)}
    with pytest.raises(DataError, match="fingerprint"):
        execute("train_symbols", market_config(overrides(tmp_path)), bad, {"model": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="ppo.fold"):
        execute(
            "train_symbols",
            market_config(overrides(tmp_path, "ppo.fold=3")),
            upstream,
            {"model": str(tmp_path / "out")},
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "checkpoints").exists()


# --------------------------------------------------------------------------- DDP
def test_ddp_on_two_gloo_processes_keeps_replicas_identical_and_learns(upstream, tmp_path):
    metrics, out = train(upstream, tmp_path, "ppo.world_size=2", "device=cpu")
    key = read_json(out / "manifest.json")["run_key"]
    root = tmp_path / "checkpoints" / key
    final = CheckpointStore(root).latest_update()
    assert final == 4 and metrics["env_steps"] == 64
    ranks = [torch.load(root / f"update_{final:07d}" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert same_weights(ranks[0]["agent"], ranks[1]["agent"])  # replicas identical after training
    assert same_weights(saved_from(ranks[0]["agent"]), weights(out))
    # each rank stepped its own envs (its own seed) ...
    assert not torch.equal(ranks[0]["env"]["_account"], ranks[1]["env"]["_account"])
    # ... and the shared model moved away from its initialization
    cfg = market_config(overrides(tmp_path, "ppo.world_size=2"))
    init = build_agent(
        cfg, load_training_data(cfg, {k: Path(v) for k, v in upstream.items()}), torch.device("cpu")
    ).state_dict()
    moved = [k for k in init if not torch.equal(init[k], ranks[0]["agent"][k])]
    assert {"actor.w2", "critic.w2", "w_market"} <= set(moved)
    assert read_json(out / "telemetry.json")["world_size"] == 2


def test_torchrun_ranks_join_one_job_and_only_rank_0_writes(upstream, tmp_path):
    """The multi-node path (manifests/training/pytorchjob.yaml): torchrun starts every rank with the same
    ``hmarl step`` command; they train as one DDP job and only rank 0 writes the step's outputs."""
    ckpt, out = tmp_path / "ck", tmp_path / "out"
    args = _cli(tmp_path, upstream, out, ckpt, ["device=cpu"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, *args[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(out / "telemetry.json")["world_size"] == 2  # torchrun's count wins over ppo.world_size
    key = read_json(out / "manifest.json")["run_key"]
    root = ckpt / key
    final = CheckpointStore(root).latest_update()
    ranks = [torch.load(root / f"update_{final:07d}" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert same_weights(ranks[0]["agent"], ranks[1]["agent"])
    assert same_weights(saved_from(ranks[0]["agent"]), weights(out))
    assert not torch.equal(ranks[0]["env"]["_account"], ranks[1]["env"]["_account"])


def test_bf16_autocast_is_a_no_op_on_cpu(upstream, tmp_path):
    _, plain = train(upstream, tmp_path / "plain")
    _, bf16 = train(upstream, tmp_path / "bf16", "ppo.bf16=true", "device=cpu")
    assert same_weights(weights(plain), weights(bf16))


@pytest.mark.gpu
def test_cuda_training_with_bf16_autocast_resumes(upstream, tmp_path):
    metrics, out = train(upstream, tmp_path, "device=cuda", "ppo.bf16=true")
    assert metrics["env_steps"] == 64 and all(
        torch.isfinite(v).all() for v in weights(out).values() if v.is_floating_point()
    )
    again, _ = train(upstream, tmp_path, "device=cuda", "ppo.bf16=true", out="again")
    assert again["resumed"] == 1.0


# --------------------------------------------------------------------------- telemetry
def test_tensorboard_and_mlflow_get_the_seed_names(upstream, tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    _, out = train(
        upstream,
        tmp_path,
        "tracking.enabled=true",
        f"tracking.mlflow_uri={uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        f"tracking.tensorboard_dir={tmp_path / 'tb'}",
    )
    (run_dir,) = list((tmp_path / "tb" / "train_symbols").iterdir())
    events = EventAccumulator(str(run_dir)).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "charts/policy_action_entropy_mean",
        "charts/executed_vs_policy_trades",
        "charts/consecutive_action_violations",
        "charts/diversity_bonus",
        "charts/SPS",
        "charts/action_distribution/HOLD",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/sl_kl",
        "losses/approx_kl",
        "rewards/pnl",
        "rewards/diversity_bonus",
    ):
        assert tag in scalars, tag
    assert "charts/action_distribution" in events.Tags()["histograms"]
    assert len(events.Scalars("charts/SPS")) == 4
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hmarl").experiment_id])
    for key in MANDATORY:
        assert key in run.data.metrics, key
    assert "charts/policy_action_entropy_mean" in run.data.metrics
    assert run.data.params["ppo.total_steps"] == "64"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "symbols")}
    assert "symbols/agent.pt" in artifacts


# --------------------------------------------------------------------------- anti-collapse smoke run
def test_smoke_run_keeps_entropy_and_action_variety(upstream, tmp_path):
    """The seed's collapse incident: with the smoke profile's agent and PPO settings (reward weights,
    exploration stack and anti-collapse mechanics at their defaults), by env step 6k the policy action
    entropy stays >= 0.20 and agents show >= 4 distinct actions per 120-step window."""
    smoke = [
        "agent.trunk_dim=64",
        "agent.hidden=32",
        "ppo.total_steps=6400",
        "ppo.num_steps=128",
        "ppo.update_epochs=2",
        "ppo.num_minibatches=4",
        "env.num_envs=8",
        "env.episode_length=256",
        "ppo.checkpoint_every=100",
    ]
    _, out = train(upstream, tmp_path, *smoke)
    rows = [r for r in read_json(out / "telemetry.json")["series"] if r["global_step"] >= 6000]
    assert rows
    for r in rows:
        assert r["policy_action_entropy_mean"] >= 0.20
        assert r["unique_actions_per_window_mean"] >= 4.0
        # agents that cannot trade (flat while the open-position limit is reached) are the exceptions
        assert r["unique_actions_per_window_ge4"] >= 0.8


# --------------------------------------------------------------------------- agent options
def test_ppo_directive_is_the_training_directive_and_is_checked():
    cfg = market_config(TINY, "planted_alpha", "ppo.directive=[2,1,2]")
    assert cfg.env.master.default == [2, 1, 1]  # the master's own default is untouched
    assert symbol_stage_config(cfg).env.master.default == [2, 1, 2]
    assert symbol_stage_config(market_config(TINY)).env.master.default == [2, 1, 1]  # null: env default
    with pytest.raises(ConfigError, match=r"ppo.directive: .*outside the grid"):
        symbol_stage_config(market_config(TINY, "planted_alpha", "ppo.directive=[2,1,3]"))


def test_warm_start_fits_the_actor_to_the_sl_prior(upstream, tmp_path):
    _, out = train(
        upstream, tmp_path, "agent.warm_start=true", "agent.warm_start_steps=150", "ppo.total_steps=16"
    )
    warm = read_json(out / "telemetry.json")["warm_start"]
    assert warm["warm_start_agreement"] > 0.8 and warm["warm_start_kl"] < 0.1


def test_curriculum_onboards_symbols_and_inactive_agents_hold(upstream, tmp_path):
    _, out = train(
        upstream, tmp_path, "ppo.curriculum.enabled=true", "ppo.curriculum.stages=[[0,0.5],[32,1.0]]"
    )
    rows = read_json(out / "telemetry.json")["series"]
    assert [r["active_symbols"] for r in rows] == [3, 3, 6, 6]


@pytest.mark.parametrize(
    "option", [["agent.head=shared"], ["agent.encoder=finetune"], ["agent.head_weights=float32"]]
)
def test_shared_head_and_encoder_finetuning_train_and_reload(upstream, tmp_path, option):
    _, out = train(upstream, tmp_path, *option, "ppo.total_steps=32")
    agent, meta = load_agent(out / "agent.pt")
    if option == ["agent.encoder=finetune"]:
        assert agent.encoder is not None and meta["encoder"]["window"] == 24
        assert any(k.startswith("encoder.") for k in weights(out))
    elif option == ["agent.head_weights=float32"]:  # trained weights as they are, nothing to compare
        assert int8_weights(agent.actor.w1) is None
        assert "int8_action_agreement" not in read_json(out / "evaluation.json")
    else:
        assert agent.cfg.head == "shared"
