"""The Kubeflow Pipelines front end: compiled IR, cluster settings, parameter handling, the client calls
of submit / schedule (against a local fake of the KFP REST API) and real local runs of the DAG."""

import json
import math
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.dsl import Dataset, Metrics, Model, Output

from hmarl import cli
from hmarl.config import ConfigError, build_config
from hmarl.data.store import FeatureStore
from hmarl.data.synthetic import generate
from hmarl.errors import HmarlError, StepError
from hmarl.kfp_glue import (
    emit_metrics,
    gather,
    load_config,
    nested,
    resolve_config,
    run_step,
    training_overrides,
    verdict,
)
from hmarl.pipeline_cli import (
    LocalRun,
    check_arguments,
    compile_pipeline,
    ir_defaults,
    local_session,
    normalize_cron,
    pipeline_module,
    read_local_run,
    run_local,
    without_retries,
)
from hmarl.steps.runner import execute, step_module
from http_fixtures import serving

REPO = Path(__file__).resolve().parents[1]
PARAMS_TEXT = (REPO / "params.yaml").read_text()
COMMITTED_IR = REPO / "pipelines" / "hmarl_pipeline.yaml"
DATA_STEPS = ("ingest", "validate", "features")
SMALL = ["synthetic.num_symbols=8", "universe.top_n=6"]  # smoke profile, fewer symbols: ~5 s per run
# task name -> step; the data steps (cached, CPU), the training steps (GPU pool), and the rest
CACHED = {
    "ingest": "ingest",
    "validate": "validate",
    "features": "features",
    "sl-cache": "sl_cache",
    "gate": "gate",
}
TRAINING = {
    "pretrain-encoder": "pretrain_encoder",
    "train-symbols": "train_symbols",
    "train-master": "train_master",
    "stage5": "stage5",
    "walk-forward": "walk_forward",
}
STEPS = {**CACHED, **TRAINING, "promote": "promote"}

pipeline_module()  # puts the checkout's components/ and pipelines/ on sys.path, as the CLI does
from components.features import features  # noqa: E402
from components.ingest import ingest  # noqa: E402
from components.validate import validate  # noqa: E402
from pipelines.cluster import CLUSTER, GPU_IMAGE, IMAGE, data_step, training_step  # noqa: E402

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


def dags(spec: dict) -> dict[str, dict]:
    """Every DAG of the spec: the root and each group (ParallelFor body, dsl.If branch) by component."""
    return {"root": spec["root"]["dag"]} | {n: c["dag"] for n, c in spec["components"].items() if "dag" in c}


def leaf_tasks(spec: dict) -> dict[str, tuple[str, dict]]:
    """Executor tasks (not groups) wherever they sit: name -> (DAG holding it, task)."""
    groups = dags(spec)
    return {
        name: (d, t)
        for d, dag in groups.items()
        for name, t in dag["tasks"].items()
        if t["componentRef"]["name"] not in groups
    }


def wiring(spec: dict) -> dict[tuple[str, str], tuple[str, str]]:
    """(task, input) -> (producing task, output) through loops and conditions, ('pipeline', parameter)
    for pipeline parameters (a loop item: the parameter looped over), ('constant', value) for constants."""
    groups = dags(spec)
    owner = {t["componentRef"]["name"]: (d, t) for d, dag in groups.items() for t in dag["tasks"].values()}

    def source(d: str, src: dict) -> tuple[str, str]:
        if "runtimeValue" in src:
            return ("constant", src["runtimeValue"]["constant"])
        ref = src.get("taskOutputArtifact") or src.get("taskOutputParameter")
        if ref:
            key = ref.get("outputArtifactKey") or ref["outputParameterKey"]
            comp = groups[d]["tasks"][ref["producerTask"]]["componentRef"]["name"]
            if comp in groups:  # a loop's collected output: the subtask producing it
                sel = groups[comp]["outputs"]["artifacts"][key]["artifactSelectors"][0]
                return (sel["producerSubtask"], sel["outputArtifactKey"])
            return (ref["producerTask"], key)
        kind, name = (
            ("artifacts", src["componentInputArtifact"])
            if "componentInputArtifact" in src
            else ("parameters", src["componentInputParameter"])
        )
        if d == "root":
            return ("pipeline", name)
        parent, group = owner[d]
        if name == group.get("parameterIterator", {}).get("itemInput"):
            name = group["parameterIterator"]["items"]["inputParameter"]
        return source(parent, group["inputs"][kind][name])

    return {
        (task, name): source(d, src)
        for task, (d, t) in leaf_tasks(spec).items()
        for kind in ("artifacts", "parameters")
        for name, src in t.get("inputs", {}).get(kind, {}).items()
    }


def executor_of(spec: dict, task: str) -> str:
    _, t = leaf_tasks(spec)[task]
    return spec["components"][t["componentRef"]["name"]]["executorLabel"]


def component_of(spec: dict, task: str) -> dict:
    return spec["components"][leaf_tasks(spec)[task][1]["componentRef"]["name"]]


# --------------------------------------------------------------------------- compiled IR
def test_dag_wires_every_step_to_its_producers(ir):
    spec, _ = ir
    assert set(leaf_tasks(spec)) == {"resolve-config", *STEPS}
    cfg, cfg_file = ("resolve-config", "Output"), ("resolve-config", "config_file")
    store, sl = ("features", "store"), ("sl-cache", "cache")
    encoder, symbols, master = (
        ("pretrain-encoder", "encoder"),
        ("train-symbols", "model"),
        ("train-master", "model"),
    )
    ckpt = ("constant", CLUSTER.checkpoint_mount)
    trained = {"store": store, "sl_cache": sl, "encoder": encoder}

    def task(name: str, **inputs) -> dict:
        return {(name, k): v for k, v in inputs.items()}

    expected = {
        **task("resolve-config", **{p: ("pipeline", p) for p in ("params_yaml", "profile", "overrides",
                                                                 "data_uri", "mlflow_uri", "seeds", "folds")}),
        **task("ingest", config=cfg),
        **task("validate", config=cfg, canonical=("ingest", "canonical")),
        **task("features", config=cfg, canonical=("ingest", "canonical"), validation=("validate", "report")),
        **task("sl-cache", config=cfg, store=store),
        **task("pretrain-encoder", config=cfg, checkpoint_root=ckpt, store=store, sl_cache=sl),
        **task("train-symbols", config=cfg, checkpoint_root=ckpt, **trained),
        **task("train-master", config=cfg, checkpoint_root=ckpt, symbols=symbols, **trained),
        # the fan-outs: one task per item of the seeds / folds parameters
        **task("stage5", config_file=cfg_file, seed=("pipeline", "seeds"), checkpoint_root=ckpt, **trained),
        **task("walk-forward", config_file=cfg_file, fold=("pipeline", "folds"), checkpoint_root=ckpt,
               symbols=symbols, master=master, **trained),
        # the fan-in: every seed's run and every fold's evaluation
        **task("gate", config=cfg, stage5=("stage5", "run"), walk_forward=("walk-forward", "evaluation")),
        **task("promote", config=cfg, gate=("gate", "report"), walk_forward=("gate", "evaluations"),
               symbols=symbols, master=master, **trained),
    }  # fmt: skip
    assert wiring(spec) == expected


def test_fan_outs_collect_into_the_gate_and_promote_waits_for_go(ir):
    spec, _ = ir
    root = spec["root"]["dag"]["tasks"]
    loops = {leaf_tasks(spec)[t][0]: t for t in ("stage5", "walk-forward")}  # loop component -> body task
    for comp, body in loops.items():
        loop = next(t for t in root.values() if t["componentRef"]["name"] == comp)
        items = loop["parameterIterator"]["items"]["inputParameter"]
        param = {"stage5": "seeds", "walk-forward": "folds"}[body]
        assert loop["inputs"]["parameters"][items] == {"componentInputParameter": param}
    gate_inputs = component_of(spec, "gate")["inputDefinitions"]["artifacts"]
    assert gate_inputs["stage5"]["isArtifactList"] and gate_inputs["walk_forward"]["isArtifactList"]
    loop_tasks = {name for name, t in root.items() if t["componentRef"]["name"] in loops}
    assert len(loop_tasks) == 2 and loop_tasks <= set(root["gate"]["dependentTasks"])
    # promote sits alone in a branch taken only when the gate's verdict is true
    cond_dag, _ = leaf_tasks(spec)["promote"]
    assert set(dags(spec)[cond_dag]["tasks"]) == {"promote"}
    branch = next(t for t in root.values() if t["componentRef"]["name"] == cond_dag)
    assert (
        branch["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    )
    assert branch["inputs"]["parameters"]["pipelinechannel--gate-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "gate",
    }
    assert (
        component_of(spec, "gate")["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "BOOLEAN"
    )


# extra artifacts of a component beyond the step's INPUTS / OUTPUTS: the loop tasks' config copy, the
# gate's laid-out folds for promote, UI views, metrics
EXTRA_INPUTS = {"stage5": {"config_file"}, "walk-forward": {"config_file"}}
EXTRA_OUTPUTS = {"gate": {"evaluations"}}


def test_components_have_typed_artifacts_matching_the_step_contract(ir):
    spec, _ = ir
    for task, step in STEPS.items():
        comp = component_of(spec, task)
        ins = {
            k: v["artifactType"]["schemaTitle"]
            for k, v in comp["inputDefinitions"].get("artifacts", {}).items()
        }
        outs = {
            k: v["artifactType"]["schemaTitle"] for k, v in comp["outputDefinitions"]["artifacts"].items()
        }
        mod = step_module(step)
        assert set(ins) == set(mod.INPUTS) | EXTRA_INPUTS.get(task, set()), task
        assert set(ins.values()) <= {"system.Dataset", "system.Model", "system.Artifact"}, task
        data_outs = {k for k, v in outs.items() if v in ("system.Dataset", "system.Model")}
        assert data_outs == set(mod.OUTPUTS) | EXTRA_OUTPUTS.get(task, set()), task
        assert outs["metrics"] == "system.Metrics", task
        params = comp["inputDefinitions"]["parameters"]
        assert "config" in params or "config_file" in ins, task
    # trained things are Models, so the UI and lineage tell them from data
    for task, name in (
        ("train-symbols", "model"),
        ("train-master", "model"),
        ("pretrain-encoder", "encoder"),
    ):
        assert (
            component_of(spec, task)["outputDefinitions"]["artifacts"][name]["artifactType"]["schemaTitle"]
            == "system.Model"
        )
    assert (
        component_of(spec, "stage5")["inputDefinitions"]["parameters"]["seed"]["parameterType"]
        == "NUMBER_INTEGER"
    )
    assert (
        component_of(spec, "walk-forward")["inputDefinitions"]["parameters"]["fold"]["parameterType"]
        == "NUMBER_INTEGER"
    )
    views = {
        (task, name): v["artifactType"]["schemaTitle"]
        for task in ("validate", "gate")
        for name, v in component_of(spec, task)["outputDefinitions"]["artifacts"].items()
        if name.startswith("report_")
    }
    assert views == {
        ("validate", "report_html"): "system.HTML",
        ("gate", "report_html"): "system.HTML",
        ("gate", "report_md"): "system.Markdown",
    }


def test_components_run_on_the_project_image_without_installs(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS) + 1  # + resolve-config
    for task in ("resolve-config", *STEPS):
        container = executors[executor_of(spec, task)]["container"]
        assert container["image"] == (GPU_IMAGE if task in TRAINING else IMAGE), task
        command = " ".join(container["command"])
        assert "pip install" not in command and "from hmarl.kfp_glue import" in command, task


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
MLFLOW_AUTH_ENV = {  # the pipeline identity: required (MLflow always runs behind its basic-auth app)
    "MLFLOW_TRACKING_USERNAME": ("hmarl-mlflow", "username", False),
    "MLFLOW_TRACKING_PASSWORD": ("hmarl-mlflow", "password", False),
}


def caching(spec: dict) -> dict[str, bool]:
    return {
        task: t.get("cachingOptions", {}).get("enableCache", False)
        for task, (_, t) in leaf_tasks(spec).items()
    }


def test_data_steps_are_cached_on_cpu_nodes_with_object_store_env(ir):
    spec, platform = ir
    assert caching(spec) == {
        "resolve-config": False,
        **dict.fromkeys(CACHED, True),
        **dict.fromkeys(TRAINING, False),
        "promote": False,
    }
    for task in (*CACHED, "promote"):
        exe = executor_of(spec, task)
        res = spec["deploymentSpec"]["executors"][exe]["container"]["resources"]
        assert res["resourceCpuRequest"] == CLUSTER.data_resources.cpu
        assert res["resourceMemoryRequest"] == CLUSTER.data_resources.memory
        assert res["resourceMemoryLimit"] == CLUSTER.data_resources.memory_limit
        assert "accelerator" not in res
        k8s = platform[exe]
        assert "nodeSelector" not in k8s and "tolerations" not in k8s and "pvcMount" not in k8s  # CPU nodes
        assert k8s["securityContext"] == NON_ROOT
        # steps logging to MLflow (sl_cache, gate) or registering (promote) also get its credentials
        tracked = task in ("sl-cache", "gate", "promote")
        assert env_sources(k8s) == (OBJECT_STORE_ENV | MLFLOW_AUTH_ENV if tracked else OBJECT_STORE_ENV), task
    # the cluster's tracking server (when a run names none) is read once, by resolve-config
    config_k8s = platform[executor_of(spec, "resolve-config")]
    assert env_sources(config_k8s) == {
        "MLFLOW_TRACKING_URI": ("hmarl-pipeline-env", "MLFLOW_TRACKING_URI", True)
    }


def test_training_tasks_run_on_the_gpu_pool_and_resume_after_preemption(ir):
    spec, platform = ir
    pool = CLUSTER.gpu_pool
    for task in TRAINING:
        _, t = leaf_tasks(spec)[task]
        assert t["retryPolicy"] == {
            "maxRetryCount": CLUSTER.retry.num_retries,
            "backoffDuration": CLUSTER.retry.backoff_duration,
            "backoffFactor": CLUSTER.retry.backoff_factor,
            "backoffMaxDuration": CLUSTER.retry.backoff_max_duration,
        }, task
        exe = executor_of(spec, task)
        res = spec["deploymentSpec"]["executors"][exe]["container"]["resources"]
        accelerator = res["accelerator"]
        assert accelerator["resourceType"] == pool.accelerator, task
        # what the step uses: the encoder trains on one GPU, the PPO steps one DDP process per GPU
        gpus = 1 if task == "pretrain-encoder" else pool.gpus_per_task
        assert accelerator["resourceCount"] == str(gpus), task
        assert res["resourceCpuRequest"] == CLUSTER.training_resources.cpu
        assert res["resourceMemoryRequest"] == CLUSTER.training_resources.memory
        k8s = platform[exe]
        assert k8s["nodeSelector"]["labels"] == {pool.node_selector_key: pool.node_selector_value}, task
        assert k8s["tolerations"] == [
            {"key": pool.toleration_key, "operator": "Exists", "effect": pool.toleration_effect}
        ], task
        # NCCL's shared memory: a memory-backed /dev/shm, not the runtime's 64 MiB
        assert k8s["emptyDirMounts"] == [
            {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": pool.shm_size}
        ], task
        (mount,) = k8s["pvcMount"]
        assert mount["mountPath"] == CLUSTER.checkpoint_mount
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == CLUSTER.checkpoint_pvc
        # ... and the task is told where: its checkpoints go under the mount (see training_overrides)
        assert wiring(spec)[(task, "checkpoint_root")] == ("constant", CLUSTER.checkpoint_mount)
        assert env_sources(k8s) == {**OBJECT_STORE_ENV, **MLFLOW_AUTH_ENV}
        assert k8s["securityContext"] == NON_ROOT
    for task in ("resolve-config", *CACHED, "promote"):  # nothing else retries or asks for GPUs
        assert "retryPolicy" not in leaf_tasks(spec)[task][1], task


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
        "folds": "LIST",
    }
    assert all(p["isOptional"] for p in params.values())
    # self-contained: the compile-time params.yaml, one line (a newline would break the IR header)
    default = params["params_yaml"]["defaultValue"]
    params_file = yaml.safe_load(PARAMS_TEXT)
    assert "\n" not in default and yaml.safe_load(default) == params_file
    # the fan-outs default to the params' seeds and folds
    assert [int(s) for s in params["seeds"]["defaultValue"]] == params_file["stage5"]["seeds"]
    assert [int(k) for k in params["folds"]["defaultValue"]] == params_file["walk_forward"]["folds"]
    assert params["overrides"]["defaultValue"] == [] and params["data_uri"]["defaultValue"] == ""


def without_image_tags(ir: tuple[dict, dict]) -> tuple[dict, dict]:
    """The IR with every image's tag blanked: the tag names the commit it was compiled at."""
    spec, platform = json.loads(json.dumps(ir))
    for exe in spec["deploymentSpec"]["executors"].values():
        exe["container"]["image"] = exe["container"]["image"].rpartition(":")[0]
    return spec, platform


def test_committed_ir_is_up_to_date(ir):
    assert COMMITTED_IR.is_file(), "pipelines/hmarl_pipeline.yaml missing: run `hmarl pipeline compile`"
    assert without_image_tags(load_ir(COMMITTED_IR)) == without_image_tags(ir), (
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
        overrides=["splits.n_folds=4", "walk_forward.folds=[0,1,2,3]"],
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
        ({"seeds": [1, 2.5]}, "seeds: 2.5 is not an integer"),
        ({"folds": []}, "folds: expected a non-empty list"),
        # the fan-outs must be what the gate demands: every fold, the seeds the config names
        ({"folds": [0, 1]}, r"walk_forward.folds \[0, 1\]: the gate needs every fold of splits.n_folds=3"),
        ({"profile": "full", "folds": [0, 1, 2]}, r"splits.n_folds=5, i.e. \[0, 1, 2, 3, 4\]"),
        ({"seeds": [1], "overrides": ["stage5.seeds=[2]"]}, r"seeds \[1\] \(the stage5 fan-out\) differ"),
    ],
)
def test_bad_parameters_fail_naming_the_key(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        resolve_config(PARAMS_TEXT, **kwargs)


def test_fan_out_parameters_become_the_config_the_gate_checks():
    cfg = load_config(resolve_config(PARAMS_TEXT, seeds=[7.0, 8.0], folds=[1.0, 0.0, 2.0]))
    assert cfg.stage5.seeds == [7, 8] and cfg.walk_forward.folds == [1, 0, 2]  # KFP may send floats
    full = load_config(resolve_config(PARAMS_TEXT, profile="full", folds=[0, 1, 2, 3, 4]))
    assert full.walk_forward.folds == [0, 1, 2, 3, 4] and full.splits.n_folds == 5


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


def test_fan_out_outputs_are_laid_out_by_name_for_the_gate(tmp_path):
    runs = [Dataset(name="run", uri=str(tmp_path / f"iteration-{i}" / "run")) for i in range(3)]
    for art, seed in zip(runs, (9001, 42, 1337), strict=True):
        out = nested(art, f"seed_{seed}")
        out.mkdir()
        (out / "values.json").write_text(json.dumps({"seed": seed}))
    laid = gather(runs, tmp_path / "stage5")
    assert sorted(p.name for p in laid.iterdir()) == ["seed_1337", "seed_42", "seed_9001"]
    assert json.loads((laid / "seed_42" / "values.json").read_text()) == {"seed": 42}
    # a seed produced twice (or an iteration that wrote nothing) is an error, not a silent overwrite
    with pytest.raises(StepError, match="'seed_42' produced twice"):
        gather([runs[1], runs[1]], tmp_path / "twice")
    empty = Dataset(name="run", uri=str(tmp_path / "empty"))
    with pytest.raises(StepError, match="empty"):
        gather([empty], tmp_path / "none")


def test_training_overrides_put_checkpoints_on_the_mount_and_a_process_on_each_gpu(tmp_path):
    cfg = load_config(resolve_config(PARAMS_TEXT))
    mount = tmp_path / "checkpoints"
    assert training_overrides(cfg, str(mount), gpus=1) == []  # not mounted (run-local): params' folders
    mount.mkdir()
    moved = load_config(resolve_config(PARAMS_TEXT), training_overrides(cfg, str(mount), gpus=8))
    assert moved.ppo.checkpoint_dir == str(mount / cfg.ppo.checkpoint_dir)
    assert moved.master.checkpoint_dir == str(mount / cfg.master.checkpoint_dir)
    assert moved.ppo.world_size == 8  # one DDP process per GPU of the node
    # what is trained is unchanged: the resume key ignores where checkpoints live
    assert moved.model_copy(update={"ppo": cfg.ppo, "master": cfg.master}) == cfg
    # an explicit world size or an absolute checkpoint folder is left alone
    pinned = load_config(
        resolve_config(PARAMS_TEXT, overrides=["ppo.world_size=2", "ppo.checkpoint_dir=/ck"])
    )
    assert training_overrides(pinned, str(mount), gpus=8) == [
        f"master.checkpoint_dir={json.dumps(str(mount / cfg.master.checkpoint_dir))}"
    ] + (["master.world_size=8"] if getattr(cfg.master, "world_size", None) == 1 else [])


def test_gate_verdict_is_the_go_metric():
    assert verdict({"go": 1.0, "sharpe": 0.3}) is True and verdict({"go": 0.0}) is False
    with pytest.raises(StepError, match="no 'go'"):
        verdict({"sharpe": 0.3})


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
    with serving(handler) as url:
        yield url, handler.requests


def posted(requests: list, prefix: str) -> list[dict]:
    return [body for method, path, body, _ in requests if method == "POST" and path.startswith(prefix)]


def test_submit_sends_the_compiled_pipeline_and_arguments(kfp_api, capsys):
    host, requests = kfp_api
    rc = cli.main(
        ["pipeline", "submit", "--host", host, "--experiment", "nightly", "--run-name", "r1",
         "--profile", "full", "--data-uri", "s3://bars/us.parquet", "--set", "splits.n_folds=4",
         "--seeds", "1,2", "--folds", "0,1,2,3"]
    )  # fmt: skip
    assert rc == 0 and "submitted run run-1" in capsys.readouterr().out
    assert {auth for *_, auth in requests} == {None}  # no token outside a pod
    assert [b["display_name"] for b in posted(requests, "/apis/v2beta1/experiments")] == ["nightly"]
    (run,) = posted(requests, "/apis/v2beta1/runs")
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == "hmarl-pipeline"  # the RBAC of manifests/base/rbac.yaml applies
    assert run["runtime_config"]["parameters"] == {
        "profile": "full",
        "data_uri": "s3://bars/us.parquet",
        "overrides": ["splits.n_folds=4"],
        "seeds": [1, 2],
        "folds": [0, 1, 2, 3],
    }
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "hmarl"
    assert set(leaf_tasks(spec)) == {"resolve-config", *STEPS}
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert env_sources(executors["exec-ingest"]) == OBJECT_STORE_ENV


def test_fan_outs_follow_the_config_unless_given():
    defaults = ir_defaults(COMMITTED_IR)
    # the full profile's five folds come along; the smoke defaults are not repeated
    assert check_arguments({"profile": "full"}, defaults) == {"profile": "full", "folds": [0, 1, 2, 3, 4]}
    assert check_arguments({}, defaults) == {}
    assert check_arguments({"overrides": ["stage5.seeds=[5]"]}, defaults)["seeds"] == [5]
    with pytest.raises(ConfigError, match="splits.n_folds=4"):
        check_arguments({"overrides": ["splits.n_folds=4"]}, defaults)


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
        (["--folds", "0,1"], "walk_forward.folds [0, 1]: the gate needs every fold"),
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
    assert job["service_account"] == "hmarl-pipeline"
    assert job["runtime_config"]["parameters"] == {"mlflow_uri": "http://mlflow:5000"}
    committed, _ = load_ir(COMMITTED_IR)
    assert job["pipeline_spec"]["pipeline_spec"]["root"] == committed["root"]


def test_cron_expressions():
    assert normalize_cron("30 2 * * *") == "0 30 2 * * *"
    assert normalize_cron("0 0 3 * * 1-5") == "0 0 3 * * 1-5"
    with pytest.raises(HmarlError, match="5 \\(crontab\\) or 6"):
        normalize_cron("@daily")


# --------------------------------------------------------------------------- local runs of the DAG
@dsl.pipeline(name="hmarl-data")
def data_pipeline(config: str):
    """The DAG's data front (the same components and task settings): the fast local run."""
    ingested = data_step(ingest(config=config))
    validated = data_step(validate(config=config, canonical=ingested.outputs["canonical"]))
    data_step(
        features(
            config=config, canonical=ingested.outputs["canonical"], validation=validated.outputs["report"]
        )
    )


@pytest.mark.integration
def test_data_components_run_locally_and_cache(tmp_path):
    cfg = resolve_config(PARAMS_TEXT, overrides=SMALL)
    with local_session(tmp_path / "outputs", tmp_path / "cache", cache=True):
        data_pipeline(config=cfg)
    (run_dir,) = (tmp_path / "outputs").iterdir()
    run = read_local_run(run_dir)
    assert set(run.outputs) == set(DATA_STEPS)
    store = FeatureStore.load(run.outputs["features"]["store"])
    assert store.num_symbols == 6 and store.num_bars == 1200
    assert np.isfinite(store.features).all() and store.tradable.any()
    assert run.metrics["ingest"]["symbols"] == 6.0
    assert run.metrics["validate"]["success"] == 1.0 and run.metrics["validate"]["expectations_failed"] == 0.0
    assert run.metrics["features"]["bars"] == store.num_bars and run.metrics["features"]["nonfinite"] == 0.0
    assert "<html" in run.outputs["validate"]["report_html"].read_text().lower()
    # the same config again: every data task is a cache hit, nothing executes
    with local_session(tmp_path / "outputs", tmp_path / "cache", cache=True):
        data_pipeline(config=cfg)
    assert len(list((tmp_path / "outputs").iterdir())) == 1


# a pipeline small enough for a laptop: 5 symbols x 420 bars, 2 folds, 2 seeds, a few hundred env steps
TINY = [
    *(
        "synthetic.num_symbols=6",
        "universe.top_n=5",
        "synthetic.num_bars=420",
        "universe.dollar_volume_window=60",
    ),
    *("splits.n_folds=2", "splits.train_bars=150", "splits.val_bars=40", "splits.test_bars=50"),
    *("stage5.total_steps=256", "env.num_envs=4", "ppo.num_steps=32", "ppo.total_steps=256"),
    *("master.total_steps=128", "master.num_steps=32", "sl.max_epochs=1", "agent.warm_start_steps=10"),
    *("encoder.epochs=1", "encoder.d_model=16", "encoder.embed_dim=32", "encoder.max_bars_per_epoch=16"),
    *("encoder.branches={transformer: true, lstm: false, cnn: false, graph: false}", "encoder.scales=[1]"),
    *("encoder.probe_l2=[1.0]", "encoder.attribution_bars=2", "encoder.probe_max_samples=500"),
    "ppo.progress=false",
]
ALL_TIERS_ADVISORY = "gate.tiers={learning: false, master: false, stage5: false, stability: false, value: false, strategic: false}"


def tiny_run(tmp_path: Path, *extra: str) -> tuple[LocalRun, Path]:
    """The whole DAG, locally, on the TINY config; MLflow, TensorBoard and checkpoints under tmp_path."""
    local_files = [
        f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_root={tmp_path}/mlartifacts",
        f"tracking.tensorboard_dir={tmp_path}/runs",
        f"ppo.checkpoint_dir={tmp_path}/checkpoints/symbols",
        f"master.checkpoint_dir={tmp_path}/checkpoints/master",
    ]
    args = {"overrides": [*TINY, *local_files, *extra], "seeds": [1, 2], "folds": [0, 1]}
    run = run_local(args, tmp_path / "kfp")
    return run, tmp_path / "mlruns.db"


def check_data_in_verdict_out(run: LocalRun) -> dict:
    """The run went from bars to a gate verdict over both seeds and both folds; returns gate.json."""
    executed = {"resolve-config", "ingest", "validate", "features", "sl-cache", "pretrain-encoder",
                "train-symbols", "train-master", "stage5[0]", "stage5[1]", "walk-forward[0]", "walk-forward[1]",
                "gate"}  # fmt: skip
    assert executed <= set(run.outputs)
    assert run.metrics["ingest"]["symbols"] == 5.0
    seeds = sorted(p.name for t in ("stage5[0]", "stage5[1]") for p in run.outputs[t]["run"].iterdir())
    assert seeds == ["seed_1", "seed_2"]
    report = run.outputs["gate"]["report"]
    gate_json = json.loads((report / "gate.json").read_text())
    go = run.output_parameters["gate"]["Output"]
    assert go is gate_json["go"] and run.metrics["gate"]["go"] == float(go)  # one verdict, three views
    assert run.metrics["gate"]["n_seeds"] == 2.0 and run.metrics["gate"]["n_folds"] == 2.0
    assert sorted(p.name for p in run.outputs["gate"]["evaluations"].iterdir()) == ["fold_0", "fold_1"]
    assert run.outputs["gate"]["report_html"].read_text() == (report / "report.html").read_text()
    assert run.outputs["gate"]["report_md"].read_text() == (report / "report.md").read_text()
    return gate_json


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_end_to_end_gate_verdict_decides_promotion(tmp_path):
    run, _ = tiny_run(tmp_path)
    gate_json = check_data_in_verdict_out(run)
    # a few hundred env steps cannot pass the blocking criteria: no-go, and promote never runs
    assert gate_json["go"] is False and gate_json["failing"]
    assert "promote" not in run.outputs


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_end_to_end_promotes_on_go(tmp_path):
    run, mlruns = tiny_run(tmp_path, ALL_TIERS_ADVISORY)  # every criterion reported, none blocking
    gate_json = check_data_in_verdict_out(run)
    assert gate_json["go"] is True
    decision = json.loads((run.outputs["promote"]["decision"] / "decision.json").read_text())
    assert decision["gate"]["decision"] == "go" and decision["decision"] == "promoted"
    assert decision["periods"] == ["fold_0", "fold_1"]  # judged on the folds the gate laid out
    assert run.metrics["promote"]["promoted"] == 1.0
    # promotion out: the registry's champion is the version the task registered
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=f"sqlite:///{mlruns}").get_model_version_by_alias(
        "hmarl", "champion"
    )
    assert str(champion.version) == decision["version"]


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


def test_run_local_runs_without_retry_backoff():
    spec = pipeline_module().hmarl_pipeline.pipeline_spec
    assert (
        leaf_tasks(json_format.MessageToDict(spec))["train-symbols"][1]["retryPolicy"]["maxRetryCount"] == 3
    )
    local_spec = json_format.MessageToDict(without_retries(spec))
    assert all("retryPolicy" not in t for _, t in leaf_tasks(local_spec).values())
    assert set(leaf_tasks(local_spec)) == set(leaf_tasks(json_format.MessageToDict(spec)))


def test_run_local_rejects_bad_parameters_before_running(tmp_path):
    with pytest.raises(ConfigError, match="universe.top_n"):
        run_local({"overrides": ["universe.top_n=0"]}, tmp_path / "kfp")
    assert not (tmp_path / "kfp").exists()
