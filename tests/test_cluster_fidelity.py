"""Cluster fidelity (``make test-cluster``): the compiled pipeline run as a cluster would run it.

A real ``mlflow server`` (basic-auth app, PostgreSQL backend from Debian, artifacts proxied into an
S3-compatible store: moto's server) on 127.0.0.1; every pipeline task runs as UID 10001 with the checkout (its working
directory) and HOME read-only, writing only its outputs and its scratch folder (tests/cluster_harness.py).
After the run, the run folder is deleted and ``hmarl act`` from an empty folder loads the champion from
the server's copy. Faults: wrong credentials, a server that is down, a training task killed mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster_harness import MlflowServer, Postgres, S3Server, Sandbox, owned_dir, remove_tree
from test_kfp_pipeline import ALL_TIERS_ADVISORY, TINY

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

PIPELINE = ("pipeline", "pipeline-password-1")
READER = ("desk", "desk-password-123")


@pytest.fixture(scope="module")
def stack():
    """PostgreSQL + MLflow (basic auth) + identities, and the task sandbox; stopped and removed at the end.
    (Not under pytest's tmp_path: that is private to root, and the task and postgres accounts must reach it.)"""
    root = Path(tempfile.mkdtemp(prefix="hmarl-cluster-"))
    root.chmod(0o755)
    server = pg = s3 = None
    try:
        pg = Postgres(root / "pg").start()
        s3 = S3Server(root / "s3").start()
        server = MlflowServer(root / "mlflow", pg.uri, f"s3://{s3.bucket}", s3.env).start()
        # the bootstrap the cluster's Job runs (manifests/base/mlflow-auth.yaml), as a process of its own
        env = {**os.environ, **creds(server.admin), "MLFLOW_TRACKING_URI": server.uri,
               "HMARL_PIPELINE_USER": PIPELINE[0], "HMARL_PIPELINE_PASSWORD": PIPELINE[1],
               "HMARL_READER_USER": READER[0], "HMARL_READER_PASSWORD": READER[1]}  # fmt: skip
        boot = subprocess.run([sys.executable, "-m", "hmarl.tracking.identities"], env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert boot.returncode == 0, boot.stderr[-3000:]
        yield server, Sandbox(root / "sandbox"), root, s3
    finally:
        if server is not None:
            server.stop()
        for service in (pg, s3):
            if service is not None:
                service.stop()
        remove_tree(root)


def creds(identity: tuple[str, str]) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": identity[0], "MLFLOW_TRACKING_PASSWORD": identity[1]}


def registered_versions(server: MlflowServer) -> list:
    from mlflow import MlflowClient

    os.environ.update(creds(server.admin))
    try:
        return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri).search_model_versions(
            "name='hmarl'"
        )
    finally:
        for k in creds(server.admin):
            os.environ.pop(k)


def canonical_bars(run_dir: Path) -> Path:
    (bars,) = run_dir.glob("**/ingest/canonical")
    return bars


@pytest.mark.timeout(1800)  # the whole DAG (tiny sizes) on a shared 2-core machine: ~7 min
def test_pipeline_runs_read_only_as_uid_10001_and_act_serves_the_servers_copy(stack):
    server, box, root, s3 = stack
    work = owned_dir(root / "kfp")
    overrides = [*TINY, ALL_TIERS_ADVISORY]
    cmd = ["python", "-m", "hmarl.cli", "pipeline", "run-local", "--workdir", str(work),
           "--mlflow-uri", server.uri, "--seeds", "1,2", "--folds", "0,1"]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    done = box.run(cmd, writable=[work], **creds(PIPELINE))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    # nothing was written into the checkout or HOME (they were read-only: a write would have failed the run)
    assert not any(box.home.iterdir())
    (run_dir,) = (work / "outputs").iterdir()
    gate = json.loads(next(run_dir.glob("**/gate/report/gate.json")).read_text())
    assert gate["go"] is True
    decision = json.loads(next(run_dir.glob("**/promote/decision/decision.json")).read_text())
    assert decision["decision"] == "promoted"
    # the artifacts are in the server's store, not on the task's disk: bundle, TensorBoard events
    stored = s3.keys()  # the artifacts are in the object store, not on the task's disk
    assert any("/artifacts/bundle/master/" in p for p in stored)
    assert any("/artifacts/tensorboard/" in p and "tfevents" in p for p in stored)
    assert not list(box.scratch.rglob("mlartifacts"))

    bars = owned_dir(root / "bars")
    os.system(f"cp -r {canonical_bars(run_dir)}/. {bars}")
    remove_tree(work)  # the run folder is gone: only the server holds the model
    empty = owned_dir(root / "desk")
    out = box.run(["python", "-m", "hmarl.cli", "act", "--model", "models:/hmarl@champion", "--data", str(bars)],
                  writable=[empty], cwd=empty, MLFLOW_TRACKING_URI=server.uri, **creds(READER))  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    orders = json.loads(out.stdout)
    assert len(orders["orders"]) == 5 and all(o["action"] for o in orders["orders"])
    assert not any(empty.iterdir())
    # the same for an evaluation: only its --out folder is written
    report = owned_dir(root / "evaluation")
    ev = box.run(["python", "-m", "hmarl.cli", "evaluate", "--model", "models:/hmarl@champion", "--data", str(bars),
                  "--out", str(report / "out")], writable=[empty, report], cwd=empty,
                 MLFLOW_TRACKING_URI=server.uri, **creds(READER))  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-4000:]
    assert (report / "out" / "metrics.json").is_file() and not any(empty.iterdir())


def test_wrong_credentials_fail_naming_the_server_and_register_nothing(stack):
    server, box, root, s3 = stack
    before = len(registered_versions(server))
    cfg = root / "cfg-wrong"
    done = box.run(["python", "-m", "hmarl.cli", "act", "--model", "models:/hmarl@champion", "--data", "/nonexistent"],
                   MLFLOW_TRACKING_URI=server.uri,
                   **creds((PIPELINE[0], "not-the-password")))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"MLflow tracking server {server.uri} refused the credentials of user 'pipeline'" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(registered_versions(server)) == before and not cfg.exists()


def test_promote_as_the_read_only_identity_is_refused(stack):
    server, box, root, s3 = stack
    from hmarl.config import TrackingConfig
    from hmarl.tracking import remote
    from hmarl.tracking.registry import ModelRegistry

    before = len(registered_versions(server))
    os.environ.update(creds(READER))
    try:
        remote._CHECKED.clear()
        folder = root / "bundle"
        folder.mkdir(exist_ok=True)
        (folder / "manifest.json").write_text("{}")
        with pytest.raises(remote.TrackingServerError, match=f"{server.uri}: user 'desk' may not"):
            ModelRegistry(TrackingConfig(mlflow_uri=server.uri)).register("hmarl", folder)
    finally:
        for k in creds(READER):
            os.environ.pop(k)
    assert len(registered_versions(server)) == before


def test_server_down_retries_with_backoff_then_fails_clearly(stack):
    _, box, _, _ = stack
    from cluster_harness import free_port

    down = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    done = box.run(["python", "-m", "hmarl.cli", "act", "--model", "models:/hmarl@champion", "--data", "/x"],
                   MLFLOW_TRACKING_URI=down, MLFLOW_HTTP_REQUEST_MAX_RETRIES="3",
                   MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0.5", **creds(READER))  # fmt: skip
    waited = time.monotonic() - t0
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"MLflow tracking server {down} unreachable after 4 attempts" in done.stderr
    assert done.stderr.count("not answering") == 3 and waited >= 0.5 + 1 + 2


@pytest.mark.timeout(1200)
def test_killed_training_task_resumes_from_the_checkpoint_volume(stack):
    """The train_symbols component body (what a retried KFP task runs) killed with SIGKILL after its first
    checkpoint, then run again on the same volume: it resumes instead of starting over."""
    server, box, root, s3 = stack
    work = owned_dir(root / "resume")
    volume = owned_dir(root / "checkpoints")
    script = work / "task.py"
    overrides = [*TINY, "ppo.total_steps=4096", "ppo.checkpoint_every=1"]
    script.write_text(
        RESUME_TASK.format(work=str(work), volume=str(volume), overrides=overrides, uri=server.uri)
    )
    first = box.popen(["python", str(script)], writable=[work, volume], **creds(PIPELINE))
    deadline = time.monotonic() + 600
    while not list(volume.rglob("*.pt")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[0][-4000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()  # reaped, its output pipe drained and closed
    assert first.returncode == -signal.SIGKILL
    again = box.run(["python", str(script)], writable=[work, volume], **creds(PIPELINE))
    assert again.returncode == 0, again.stderr[-4000:]
    metrics = json.loads(again.stdout.strip().splitlines()[-1])
    assert metrics["resumed"] == 1.0


RESUME_TASK = """
import json, sys
from pathlib import Path
from hmarl.kfp_glue import resolve_config, run_step
work = Path({work!r})
cfg = resolve_config(Path("params.yaml").read_text(), overrides={overrides!r}, mlflow_uri={uri!r}, seeds=[1], folds=[0, 1])
for step, ins, outs in (("ingest", {{}}, {{"canonical": "canonical"}}),
                        ("validate", {{"canonical": "canonical"}}, {{"report": "validation"}}),
                        ("features", {{"canonical": "canonical", "validation": "validation"}}, {{"store": "store"}}),
                        ("sl_cache", {{"store": "store"}}, {{"cache": "sl"}}),
                        ("pretrain_encoder", {{"store": "store", "sl_cache": "sl"}}, {{"encoder": "encoder"}})):
    if not (work / list(outs.values())[0]).exists():
        run_step(step, cfg, inputs={{k: work / v for k, v in ins.items()}}, outputs={{k: work / v for k, v in outs.items()}})
values = run_step("train_symbols", cfg, inputs={{"store": work / "store", "sl_cache": work / "sl", "encoder": work / "encoder"}},
                  outputs={{"model": work / "model"}}, checkpoint_root={volume!r})
print(json.dumps(values))
"""
