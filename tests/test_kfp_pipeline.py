"""The Kubeflow Pipelines front end: compiled IR, cluster settings, parameter handling, the client calls
of submit / schedule (against a local fake of the KFP REST API) and real local runs of the DAG."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Metrics, Model, Output

from hmarl import cli
from hmarl.config import ConfigError, build_config
from hmarl.data.store import FeatureStore
from hmarl.data.synthetic import generate
from hmarl.errors import HmarlError
from hmarl.kfp_glue import emit_metrics, load_config, resolve_config, run_step
from hmarl.pipeline_cli import compile_pipeline, normalize_cron, pipeline_module, run_local
from hmarl.steps.runner import execute, step_module

REPO = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
COMMITTED_IR = REPO / "pipelines" / "hmarl_pipeline.yaml"
DATA_STEPS = ("ingest", "validate", "features")
SMALL = ["synthetic.num_symbols=8", "universe.top_n=6"]  # smoke profile, fewer symbols: ~5 s per run

pipeline_module()  # puts the checkout's components/ and pipelines/ on sys.path, as the CLI does
from pipelines.cluster import CLUSTER, GPU_IMAGE, IMAGE, training_step  # noqa: E402

NON_ROOT = {  # as the Kubernetes config records it
    "runAsNonRoot": True,
    "runAsUser": str(CLUSTER.run_as_user),
    "runAsGroup": str(CLUSTER.run_as_group),
}


def load_ir(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a compiled package."""
    docs = list(yaml.safe_load_all(path.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> tuple[dict, dict]:
    return load_ir(compile_pipeline(tmp_path_factory.mktemp("ir") / "hmarl_pipeline.yaml"))


def executor_of(spec: dict, task: str) -> str:
    comp = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["components"][comp]["executorLabel"]


# --------------------------------------------------------------------------- compiled IR
def test_dag_has_the_steps_and_their_dependency_edges(ir):
    spec, _ = ir
    tasks = spec["root"]["dag"]["tasks"]
    assert {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()} == {
        "resolve-config": set(),
        "ingest": {"resolve-config"},
        "validate": {"resolve-config", "ingest"},
        "features": {"resolve-config", "ingest", "validate"},
    }
    wiring = {
        (task, name): (
            src["taskOutputArtifact"]["producerTask"],
            src["taskOutputArtifact"]["outputArtifactKey"],
        )
        for task, t in tasks.items()
        for name, src in t.get("inputs", {}).get("artifacts", {}).items()
    }
    assert wiring == {
        ("validate", "canonical"): ("ingest", "canonical"),
        ("features", "canonical"): ("ingest", "canonical"),
        ("features", "validation"): ("validate", "report"),
    }
    for step in DATA_STEPS:  # every step gets the one resolved config
        source = tasks[step]["inputs"]["parameters"]["config"]["taskOutputParameter"]
        assert source["producerTask"] == "resolve-config"


def test_components_have_typed_artifacts_matching_the_step_contract(ir):
    spec, _ = ir
    for step in DATA_STEPS:
        comp = spec["components"][spec["root"]["dag"]["tasks"][step]["componentRef"]["name"]]
        ins = {
            k: v["artifactType"]["schemaTitle"]
            for k, v in comp["inputDefinitions"].get("artifacts", {}).items()
        }
        outs = {
            k: v["artifactType"]["schemaTitle"] for k, v in comp["outputDefinitions"]["artifacts"].items()
        }
        mod = step_module(step)
        assert ins == dict.fromkeys(mod.INPUTS, "system.Dataset"), step
        data_outs = {k: v for k, v in outs.items() if v in ("system.Dataset", "system.Model")}
        assert set(data_outs) == set(mod.OUTPUTS), step
        assert outs["metrics"] == "system.Metrics", step
        assert comp["inputDefinitions"]["parameters"]["config"]["parameterType"] == "STRING"
    validate_outs = spec["components"]["comp-validate"]["outputDefinitions"]["artifacts"]
    assert validate_outs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_components_run_on_the_project_image_without_installs(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{n}" for n in ("resolve-config", *DATA_STEPS)}
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == IMAGE, name
        command = " ".join(container["command"])
        assert "pip install" not in command and "from hmarl.kfp_glue import" in command, name


def env_sources(k8s: dict) -> dict[str, tuple[str, str, bool]]:
    """Environment variable -> (Secret/ConfigMap name, key, optional) of one executor's Kubernetes config."""
    out = {}
    for field, name, key in (
        ("secretAsEnv", "secretName", "secretKey"),
        ("configMapAsEnv", "configMapName", "configMapKey"),
    ):
        for src in k8s.get(field, []):
            for m in src["keyToEnv"]:
                out[m["envVar"]] = (src[name], m[key], src.get("optional", False))
    return out


OBJECT_STORE_ENV = {
    "AWS_ACCESS_KEY_ID": ("hmarl-s3", "access_key_id", False),
    "AWS_SECRET_ACCESS_KEY": ("hmarl-s3", "secret_access_key", False),
    "AWS_ENDPOINT_URL": ("hmarl-s3", "endpoint_url", False),
    "MLFLOW_S3_ENDPOINT_URL": ("hmarl-s3", "endpoint_url", False),
}
MLFLOW_AUTH_ENV = {
    "MLFLOW_TRACKING_USERNAME": ("hmarl-mlflow", "username", True),
    "MLFLOW_TRACKING_PASSWORD": ("hmarl-mlflow", "password", True),
}


def test_data_steps_are_cached_with_requests_and_object_store_env(ir):
    spec, platform = ir
    tasks = spec["root"]["dag"]["tasks"]
    caching = {name: t["cachingOptions"].get("enableCache", False) for name, t in tasks.items()}
    assert caching == {"resolve-config": False, **dict.fromkeys(DATA_STEPS, True)}
    for step in DATA_STEPS:
        exe = executor_of(spec, step)
        res = spec["deploymentSpec"]["executors"][exe]["container"]["resources"]
        assert res["resourceCpuRequest"] == CLUSTER.data_resources.cpu
        assert res["resourceMemoryRequest"] == CLUSTER.data_resources.memory
        assert res["resourceMemoryLimit"] == CLUSTER.data_resources.memory_limit
        assert "accelerator" not in res
        k8s = platform[exe]
        assert "nodeSelector" not in k8s and "tolerations" not in k8s  # CPU nodes
        assert k8s["securityContext"] == NON_ROOT
        assert env_sources(k8s) == OBJECT_STORE_ENV
    # the cluster's tracking server (when a run names none) is read once, by resolve-config
    config_k8s = platform[executor_of(spec, "resolve-config")]
    assert env_sources(config_k8s) == {
        "MLFLOW_TRACKING_URI": ("hmarl-pipeline-env", "MLFLOW_TRACKING_URI", True)
    }


def test_ir_carries_the_pipeline_parameters(ir):
    spec, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    types = {name: p["parameterType"] for name, p in params.items()}
    assert types == {
        "profile": "STRING",
        "params_yaml": "STRING",
        "overrides": "LIST",
        "data_uri": "STRING",
        "mlflow_uri": "STRING",
        "seeds": "LIST",
    }
    assert all(p["isOptional"] for p in params.values())
    # self-contained: the compile-time params.yaml, one line (a newline would break the IR header)
    default = params["params_yaml"]["defaultValue"]
    assert "\n" not in default and yaml.safe_load(default) == yaml.safe_load(PARAMS_TEXT)
    assert [int(s) for s in params["seeds"]["defaultValue"]] == [42, 1337, 9001]
    assert params["overrides"]["defaultValue"] == [] and params["data_uri"]["defaultValue"] == ""


def test_committed_ir_is_up_to_date(ir):
    assert COMMITTED_IR.is_file(), "pipelines/hmarl_pipeline.yaml missing: run `hmarl pipeline compile`"
    assert load_ir(COMMITTED_IR) == ir, (
        "pipelines/hmarl_pipeline.yaml is stale (components, pipeline or params.yaml changed): "
        "run `hmarl pipeline compile` and commit it"
    )


def test_training_step_puts_a_task_on_the_gpu_pool(tmp_path):
    # (this module has no `from __future__ import annotations`: kfp reads real annotation objects)
    @dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
    def train(config: str, model: Output[Model], metrics: Output[Metrics]):
        pass

    @dsl.pipeline(name="gpu-probe")
    def probe(config: str = ""):
        training_step(train(config=config), gpus=4)

    path = tmp_path / "probe.yaml"
    compiler.Compiler().compile(probe, str(path))
    spec, platform = load_ir(path)
    task = spec["root"]["dag"]["tasks"]["train"]
    assert task["cachingOptions"].get("enableCache", False) is False
    retry = task["retryPolicy"]
    assert retry["maxRetryCount"] == CLUSTER.retry.num_retries
    assert retry["backoffDuration"] == CLUSTER.retry.backoff_duration
    assert retry["backoffFactor"] == CLUSTER.retry.backoff_factor
    container = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    res = container["resources"]
    assert (
        res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "4"
    )
    assert res["resourceCpuRequest"] == CLUSTER.training_resources.cpu
    assert res["resourceMemoryRequest"] == CLUSTER.training_resources.memory
    k8s = platform["exec-train"]
    pool = CLUSTER.gpu_pool
    assert k8s["nodeSelector"]["labels"] == {pool.node_selector_key: pool.node_selector_value}
    assert k8s["tolerations"] == [
        {"key": pool.toleration_key, "operator": "Exists", "effect": pool.toleration_effect}
    ]
    assert k8s["pvcMount"][0]["mountPath"] == CLUSTER.checkpoint_mount
    assert k8s["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == CLUSTER.checkpoint_pvc
    assert env_sources(k8s) == {**OBJECT_STORE_ENV, **MLFLOW_AUTH_ENV}
    assert k8s["securityContext"] == NON_ROOT


def generated_keys(kind: str, name: str) -> set[str]:
    """Keys of a Secret / ConfigMap generated by manifests/base + overlays/local (kustomize literals)."""
    keys: set[str] = set()
    for folder in ("base", "overlays/local"):
        doc = yaml.safe_load((REPO / "manifests" / folder / "kustomization.yaml").read_text())
        for gen in doc.get(f"{kind}Generator", []):
            if gen["name"] == name:
                keys |= {lit.split("=", 1)[0] for lit in gen.get("literals", [])}
    return keys


def test_cluster_names_match_the_manifests_and_images():
    manifests = REPO / "manifests"
    if not (manifests / "base" / "gpu-pool.env").is_file():
        pytest.skip("manifests/ not present")
    pool = dict(
        line.split("=", 1)
        for line in (manifests / "base" / "gpu-pool.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    gpu = CLUSTER.gpu_pool
    assert pool == {
        "accelerator_type": gpu.accelerator,
        "accelerator_limit": str(gpu.gpus_per_task),
        "node_selector_key": gpu.node_selector_key,
        "node_selector_value": gpu.node_selector_value,
        "toleration_key": gpu.toleration_key,
        "toleration_operator": "Exists",
        "toleration_effect": gpu.toleration_effect,
    }
    readme = (manifests / "README.md").read_text()
    for src in (CLUSTER.s3, CLUSTER.mlflow, CLUSTER.pipeline_env):
        kind = "secret" if src.kind == "secret" else "configMap"
        keys, generated = {key for _, key in src.env}, generated_keys(kind, src.name)
        if generated:
            assert keys <= generated, f"{kind} {src.name} lacks {keys - generated} in the manifests"
        else:  # an optional Secret the operator creates (MLflow auth): documented, with its keys
            assert src.optional and f"`{src.name}`" in readme, f"{kind} {src.name} unknown to the manifests"
            assert all(f"`{key}`" in readme for key in keys), f"{kind} {src.name}: keys not documented"
    pvc = yaml.safe_load((manifests / "base" / "checkpoints-pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == CLUSTER.checkpoint_pvc
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / dockerfile).read_text()
        assert f"USER {CLUSTER.run_as_user}:{CLUSTER.run_as_group}" in text, dockerfile


# --------------------------------------------------------------------------- parameters -> config
def test_pipeline_parameters_resolve_with_the_documented_precedence():
    text = resolve_config(
        PARAMS_TEXT,
        profile="full",
        overrides=["splits.n_folds=4"],
        data_uri="on",  # YAML 1.1 would read a bare `on` as True: it must stay the string
        mlflow_uri="http://mlflow.hmarl:5000",
    )
    cfg = load_config(text)
    assert cfg.profile == "full" and cfg.synthetic.num_bars == 4000  # the overlay applied
    assert cfg.splits.n_folds == 4  # the override beats the profile's 5
    assert (cfg.data.source, cfg.data.path) == ("path", "on")
    assert cfg.tracking.mlflow_uri == "http://mlflow.hmarl:5000"
    # '' keeps the file's values; the resolved text round-trips to the same config as the CLI builds
    plain = load_config(resolve_config(PARAMS_TEXT))
    assert plain == build_config(yaml.safe_load(PARAMS_TEXT)) and plain.data.source == "synthetic"
    # '' takes the cluster's tracking server from the environment; an explicit mlflow_uri wins
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.hmarl.svc.cluster.local:5000"}
    assert load_config(resolve_config(PARAMS_TEXT, env=env)).tracking.mlflow_uri == env["MLFLOW_TRACKING_URI"]
    assert (
        load_config(resolve_config(PARAMS_TEXT, mlflow_uri="file:///x", env=env)).tracking.mlflow_uri
        == "file:///x"
    )
    # per-task overrides (a seed of the fan-out) apply on top of the resolved config
    assert load_config(text, ["seed=1337"]).seed == 1337
    # the overrides list may come as JSON text (from UIs that edit lists as strings)
    assert load_config(resolve_config(PARAMS_TEXT, overrides='["seed=7"]')).seed == 7


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"overrides": ["splits.n_folds=0"]}, "splits.n_folds"),
        ({"overrides": ["splits.nfolds=3"]}, "splits.nfolds: unknown key"),
        ({"profile": "huge"}, "unknown profile 'huge'"),
        ({"overrides": "seed=3"}, "overrides"),
        ({"overrides": [3]}, "overrides"),
    ],
)
def test_bad_parameters_fail_naming_the_key(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        resolve_config(PARAMS_TEXT, **kwargs)


def test_emit_metrics_logs_to_the_kfp_artifact(tmp_path):
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    logged = emit_metrics(metrics, {"sharpe": 1.25, "bars": 3, "ratio": math.nan})
    assert metrics.metadata == logged == {"bars": 3.0, "sharpe": 1.25}  # NaN left out: JSON has none
    assert json.loads(Path(metrics.path).read_text()) == logged


def test_run_step_maps_artifacts_onto_the_step_runner(tmp_path):
    cfg = resolve_config(PARAMS_TEXT, overrides=SMALL)
    canonical = Dataset(name="canonical", uri=str(tmp_path / "kfp" / "canonical"))
    metrics = Metrics(name="metrics", uri=str(tmp_path / "kfp" / "metrics"))
    values = run_step("ingest", cfg, outputs={"canonical": canonical}, metrics=metrics)
    assert metrics.metadata["symbols"] == values["symbols"] == 6.0
    # same config => the same bytes as the CLI/DVC front end writes
    execute("ingest", load_config(cfg), outputs={"canonical": str(tmp_path / "cli" / "canonical")})
    for name in ("bars.parquet", "benchmark.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(Path(canonical.path) / name),
            pd.read_parquet(tmp_path / "cli" / "canonical" / name),
        )


# --------------------------------------------------------------------------- submit / schedule
class FakeKfpApi(BaseHTTPRequestHandler):
    """Just enough of the KFP v2beta1 REST API for kfp.Client; records every request."""

    requests: list[tuple[str, str, dict, str | None]]  # method, path, JSON body, Authorization header

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, {}, self.headers.get("Authorization")))
        self._reply({"multi_user": False} if "healthz" in self.path else {})  # no experiments yet

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-1", "display_name": body["display_name"]})
        elif self.path.startswith("/apis/v2beta1/recurringruns"):
            self._reply({"recurring_run_id": "job-1", "display_name": body["display_name"]})
        else:
            self.send_error(404)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def kfp_api():
    handler = type("Handler", (FakeKfpApi,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()
    thread.join()


def posted(requests: list, prefix: str) -> list[dict]:
    return [body for method, path, body, _ in requests if method == "POST" and path.startswith(prefix)]


def test_submit_sends_the_compiled_pipeline_and_arguments(kfp_api, capsys):
    host, requests = kfp_api
    rc = cli.main(
        ["pipeline", "submit", "--host", host, "--experiment", "nightly", "--run-name", "r1",
         "--profile", "full", "--data-uri", "s3://bars/us.parquet", "--set", "splits.n_folds=4",
         "--seeds", "1,2"]
    )  # fmt: skip
    assert rc == 0 and "submitted run run-1" in capsys.readouterr().out
    assert {auth for *_, auth in requests} == {None}  # no token outside a pod
    assert [b["display_name"] for b in posted(requests, "/apis/v2beta1/experiments")] == ["nightly"]
    (run,) = posted(requests, "/apis/v2beta1/runs")
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {
        "profile": "full",
        "data_uri": "s3://bars/us.parquet",
        "overrides": ["splits.n_folds=4"],
        "seeds": [1, 2],
    }
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "hmarl"
    assert set(spec["root"]["dag"]["tasks"]) == {"resolve-config", *DATA_STEPS}
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert env_sources(executors["exec-ingest"]) == OBJECT_STORE_ENV


def test_submit_from_a_pod_authenticates_with_the_service_account_token(kfp_api, tmp_path, monkeypatch):
    host, requests = kfp_api
    token = tmp_path / "token"
    token.write_text("projected-sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert cli.main(["pipeline", "submit", "--host", host, "--package", str(COMMITTED_IR)]) == 0
    assert requests and {auth for *_, auth in requests} == {"Bearer projected-sa-token"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "splits.nfolds=4"], "splits.nfolds: unknown key"),
        (["--params", "missing.yaml"], "--params missing.yaml: file not found"),
        (["--seeds", "a,b"], "--seeds 'a,b': expected comma-separated integers"),
    ],
)
def test_submit_refuses_bad_arguments_before_contacting_the_cluster(kfp_api, capsys, args, named):
    host, requests = kfp_api
    rc = cli.main(["pipeline", "submit", "--host", host, *args])
    assert rc == 2 and named in capsys.readouterr().err
    assert requests == []


def test_schedule_creates_a_recurring_run_with_the_cron(kfp_api, capsys):
    host, requests = kfp_api
    rc = cli.main(
        ["pipeline", "schedule", "--host", host, "--cron", "0 3 * * 1", "--job-name", "weekly",
         "--package", str(COMMITTED_IR), "--mlflow-uri", "http://mlflow:5000"]
    )  # fmt: skip
    assert rc == 0 and "scheduled recurring run job-1" in capsys.readouterr().out
    (job,) = posted(requests, "/apis/v2beta1/recurringruns")
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"  # KFP's 6 fields, seconds first
    assert job["display_name"] == "weekly" and job["experiment_id"] == "exp-1"
    assert job["mode"] == "ENABLE" and job["no_catchup"] is True and int(job["max_concurrency"]) == 1
    assert job["runtime_config"]["parameters"] == {"mlflow_uri": "http://mlflow:5000"}
    committed, _ = load_ir(COMMITTED_IR)
    assert job["pipeline_spec"]["pipeline_spec"]["root"] == committed["root"]


def test_cron_expressions():
    assert normalize_cron("30 2 * * *") == "0 30 2 * * *"
    assert normalize_cron("0 0 3 * * 1-5") == "0 0 3 * * 1-5"
    with pytest.raises(HmarlError, match="5 \\(crontab\\) or 6"):
        normalize_cron("@daily")


# --------------------------------------------------------------------------- local runs of the DAG
@pytest.mark.integration
def test_run_local_executes_the_dag_end_to_end(tmp_path):
    run = run_local({"overrides": SMALL}, tmp_path / "kfp", cache=True)
    assert run.cached == [] and set(run.outputs) >= set(DATA_STEPS)
    store = FeatureStore.load(run.outputs["features"]["store"])
    assert store.num_symbols == 6 and store.num_bars == 1200
    assert np.isfinite(store.features).all() and store.tradable.any()
    assert run.metrics["ingest"]["symbols"] == 6.0
    assert run.metrics["validate"]["success"] == 1.0 and run.metrics["validate"]["expectations_failed"] == 0.0
    assert run.metrics["features"]["bars"] == store.num_bars and run.metrics["features"]["nonfinite"] == 0.0
    assert "<html" in run.outputs["validate"]["report_html"].read_text().lower()
    resolved = yaml.safe_load(run.output_parameters["resolve-config"]["Output"])
    assert resolved["synthetic"]["num_symbols"] == 8 and resolved["profile"] == "smoke"

    # unchanged parameters: every task is a cache hit (data steps are cached), nothing re-executes
    # (resolve-config is never cached, it reads MLFLOW_TRACKING_URI; its unchanged text still hits)
    again = run_local({"overrides": SMALL}, tmp_path / "kfp", cache=True)
    assert again.cached == sorted(DATA_STEPS) and set(again.output_parameters) == {"resolve-config"}


@pytest.mark.integration
def test_run_local_stops_at_a_failed_validation(tmp_path, capsys):
    cfg = build_config(yaml.safe_load(PARAMS_TEXT), ["synthetic.num_symbols=4", "synthetic.num_bars=200"])
    bars, _ = generate(cfg.synthetic)
    row = bars.index[bars["symbol"] == bars["symbol"].iloc[0]][120]
    bars.loc[row, ["close", "high"]] = bars.loc[row, "close"] * 5  # a 5x spike: two outlier returns
    bad = tmp_path / "bad.csv"
    bars.to_csv(bad, index=False)

    workdir = tmp_path / "kfp"
    rc = cli.main(["pipeline", "run-local", "--workdir", str(workdir), "--data-uri", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "Inner task failed: 'validate'" in err and "report.failed/report.html" in err
    (run_dir,) = (workdir / "outputs").iterdir()
    assert (run_dir / "ingest" / "canonical" / "bars.parquet").is_file()
    assert not (run_dir / "validate" / "report").exists()  # all-or-nothing: no passed report
    assert not (run_dir / "features").exists()  # the run stopped before features
    assert "return_outliers" in (run_dir / "validate" / "report.failed" / "report.html").read_text()


def test_run_local_rejects_bad_parameters_before_running(tmp_path):
    with pytest.raises(ConfigError, match="universe.top_n"):
        run_local({"overrides": ["universe.top_n=0"]}, tmp_path / "kfp")
    assert not (tmp_path / "kfp").exists()
