"""Cluster settings without a cluster: profiles (gke-h100, kind), image tags, the scratch folder, and the
remote-tracking checks (retries with backoff, refused credentials, no local artifact location)."""

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from hmarl import cli
from hmarl.config import TrackingConfig, build_config
from hmarl.pipeline_cli import pipeline_module
from hmarl.tracking import remote
from hmarl.tracking.scratch import scratch_dir, scratch_environment, scratch_overrides
from hmarl.tracking.tracker import artifact_location
from http_fixtures import serving

REPO = Path(__file__).resolve().parents[1]
pipeline_module()  # puts the checkout (pipelines/, components/) on sys.path


def executors(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec["deploymentSpec"]["executors"], platform["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]


def test_kind_profile_asks_for_no_accelerator_or_gpu_node(tmp_path, capsys):
    from pipelines.cluster import PROFILES

    assert (
        cli.main(["pipeline", "compile", "--cluster", "kind", "--output", str(tmp_path / "kind.yaml")]) == 0
    )
    execs, k8s = executors(tmp_path / "kind.yaml")
    kind = PROFILES["kind"]
    for name in ("exec-pretrain-encoder", "exec-train-symbols", "exec-stage5", "exec-walk-forward"):
        container = execs[name]["container"]
        assert "accelerator" not in container["resources"], name
        assert container["image"] == kind.image, name  # the CPU image: no CUDA on a laptop
        assert container["resources"]["resourceCpuRequest"] == kind.training_resources.cpu
        assert "nodeSelector" not in k8s[name] and "tolerations" not in k8s[name], name
        assert "emptyDirMounts" not in k8s[name], name
        assert k8s[name]["pvcMount"][0]["mountPath"] == "/checkpoints"  # still resumes after a restart


def test_unknown_cluster_profile_is_named(tmp_path, capsys):
    assert cli.main(["pipeline", "compile", "--cluster", "eks", "--output", str(tmp_path / "x.yaml")]) == 2
    assert "cluster 'eks': unknown (known: gke-h100, kind)" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_images_are_tagged_with_version_and_commit(monkeypatch):
    import subprocess

    from pipelines.cluster import IMAGE, image_tag

    from hmarl import __version__

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    if not head:
        pytest.skip("not a git checkout")
    tag = image_tag()
    assert (
        tag in (f"{__version__}-{head}", f"{__version__}-{head}-dirty")
        and f"ghcr.io/hmarl/hmarl:{tag}" == IMAGE
    )
    monkeypatch.setenv("HMARL_IMAGE_TAG", "0.1.0-abc123")
    assert image_tag() == "0.1.0-abc123"


def test_compile_refuses_images_without_a_version_tag(tmp_path, monkeypatch, capsys):
    from pipelines import cluster

    monkeypatch.setitem(
        cluster.PROFILES, "kind", cluster.Cluster(name="kind", image="r/hmarl:0.1.0-unversioned")
    )
    assert cli.main(["pipeline", "compile", "--cluster", "kind", "--output", str(tmp_path / "x.yaml")]) == 2
    assert "HMARL_IMAGE_TAG" in capsys.readouterr().err


def test_scratch_folder_takes_every_relative_write_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HMARL_HOME", str(tmp_path / "scratch"))
    assert scratch_dir() == (tmp_path / "scratch").resolve() and scratch_dir().is_dir()
    cfg = build_config({})
    moved = build_config({}, scratch_overrides(cfg))
    root = (tmp_path / "scratch").resolve()
    assert moved.tracking.mlflow_uri == f"sqlite:///{root}/mlruns.db"
    assert moved.tracking.tensorboard_dir == str(root / "runs")
    assert moved.tracking.artifact_root == str(root / "mlartifacts")
    assert moved.ppo.checkpoint_dir == str(root / cfg.ppo.checkpoint_dir)
    assert moved.master.checkpoint_dir == str(root / cfg.master.checkpoint_dir)
    # a tracking server and absolute paths stay as they are; the working directory as scratch moves nothing
    remote_cfg = build_config({}, ['tracking.mlflow_uri="http://mlflow:5000"', "ppo.checkpoint_dir=/ck"])
    assert not [o for o in scratch_overrides(remote_cfg) if "mlflow_uri" in o or "ppo." in o]
    monkeypatch.delenv("HMARL_CACHE", raising=False)
    assert scratch_environment(root)["HMARL_CACHE"] == str(root / "cache" / "hmarl")
    monkeypatch.chdir(tmp_path)
    assert scratch_overrides(cfg, tmp_path) == [] and scratch_environment(tmp_path) == {}


def test_a_tracking_server_keeps_the_artifacts():
    assert artifact_location(TrackingConfig(mlflow_uri="https://mlflow.example:5000")) == {}
    local = artifact_location(TrackingConfig(mlflow_uri="sqlite:///x.db", artifact_root="/data/art"))
    assert local == {"artifact_location": "file:///data/art"}


class FakeMlflow(BaseHTTPRequestHandler):
    status: dict[str, int]

    def do_GET(self):  # noqa: N802
        code = self.status.get(self.path.split("?")[0], 404)
        body = json.dumps({"error_code": "UNAUTHENTICATED"} if code == 401 else {}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_mlflow():
    handler = type(
        "H", (FakeMlflow,), {"status": {"/health": 200, "/api/2.0/mlflow/experiments/search": 401}}
    )
    with serving(handler) as url:
        yield url, handler.status


def test_refused_credentials_name_the_server_and_the_user(fake_mlflow, monkeypatch):
    uri, _ = fake_mlflow
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(
        remote.TrackingServerError, match=rf"{uri} refused the credentials of user 'pipeline'"
    ):
        remote.check_server(uri)


def test_server_down_is_retried_with_exponential_backoff(fake_mlflow, monkeypatch):
    uri, status = fake_mlflow
    status["/health"] = 503
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1.5")
    waits = []
    with pytest.raises(remote.TrackingServerError, match=rf"{uri} unreachable after 4 attempts"):
        remote.wait_until_up(uri, sleep=waits.append)
    assert waits == [1.5, 3.0, 6.0]
    status["/health"] = 200
    remote.wait_until_up(uri, sleep=waits.append)
    assert len(waits) == 3


def test_tensorboard_event_files_are_logged_as_run_artifacts(tmp_path):
    """They outlive the pod: on a cluster they reach the tracking server's artifact store."""
    from mlflow import MlflowClient

    from hmarl.tracking.tensorboard import TensorBoardTracker, Trackers
    from hmarl.tracking.tracker import Tracker

    cfg = TrackingConfig(mlflow_uri=f"sqlite:///{tmp_path}/m.db", artifact_root=str(tmp_path / "art"),
                         tensorboard_dir=str(tmp_path / "runs"))  # fmt: skip
    mlflow_tracker = Tracker(cfg)
    with Trackers(mlflow_tracker, TensorBoardTracker(cfg)).start_run("train") as tr:
        tr.log_metrics({"loss": 0.5}, step=1)
        run_id = mlflow_tracker.run_id
    client = MlflowClient(tracking_uri=cfg.mlflow_uri)
    (folder,) = client.list_artifacts(run_id, "tensorboard")
    files = [f.path for f in client.list_artifacts(run_id, folder.path)]
    assert files and all("tfevents" in f for f in files)
    local = sorted((tmp_path / "runs" / "train").rglob("*tfevents*"))
    assert [Path(f).name for f in files] == [p.name for p in local]
