"""The hmarl DAG for Kubeflow Pipelines: the same steps as ``dvc.yaml``, wired through KFP artifacts.

    resolve-config -> ingest -> validate -> features -> sl_cache -> pretrain_encoder -> train_symbols
      -> train_master -> (for each seed: stage5) and (for each fold: walk_forward) -> gate -> if go: promote

(pretrain_encoder reads the SL priors, so it follows sl_cache rather than running beside it.)
Compile with ``hmarl pipeline compile`` (writes ``pipelines/hmarl_pipeline.yaml``); run on a cluster
with ``hmarl pipeline submit`` / ``schedule``, or locally with ``hmarl pipeline run-local``.

Parameters (all optional; '' keeps the value of ``params_yaml``):
    profile      profile overlay to apply (``smoke``, ``full``)
    params_yaml  the params file's text; defaults to this repo's params.yaml at compile time (as one
                 line of JSON, which is YAML too: kfp 2.17 writes a multi-line default unescaped into
                 the IR's header comment and breaks the file), so the compiled IR is self-contained
    overrides    ``KEY.PATH=VALUE`` strings, as ``hmarl step --set`` (applied last)
    data_uri     bars to ingest (path or object-store URI); '' = the params' source (synthetic default)
    mlflow_uri   MLflow tracking server; '' = the cluster's (MLFLOW_TRACKING_URI of the hmarl-pipeline-env
                 ConfigMap), else ``tracking.mlflow_uri`` of the params
    seeds        stage5 fan-out (becomes ``stage5.seeds``); default: the compile-time params'
    folds        walk_forward fan-out (becomes ``walk_forward.folds``; must be every fold of
                 ``splits.n_folds``, checked by resolve-config); default: the compile-time params'

The loops iterate over the ``seeds`` / ``folds`` parameters themselves, not over a task output: kfp's
local runner cannot resolve a ParallelFor over a task output. The gate's verdict is its single return
value (output ``Output``): the local runner evaluates a ``dsl.If`` only on outputs of that name.
"""

import json
from pathlib import Path

import yaml
from components.features import features
from components.gate import gate
from components.ingest import ingest
from components.pretrain_encoder import pretrain_encoder
from components.promote import promote
from components.resolve_config import resolve_config
from components.sl_cache import sl_cache
from components.stage5 import stage5
from components.train_master import train_master
from components.train_symbols import train_symbols
from components.validate import validate
from components.walk_forward import walk_forward
from kfp import dsl

from pipelines.cluster import CLUSTER, Cluster, config_step, data_step, registry_step, training_step

PIPELINE_NAME = "hmarl"
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
_PARAMS = yaml.safe_load(PARAMS_FILE.read_text())
DEFAULT_PARAMS_YAML = json.dumps(_PARAMS)
DEFAULT_SEEDS = list(_PARAMS["stage5"]["seeds"])
DEFAULT_FOLDS = list(_PARAMS["walk_forward"]["folds"])
ENCODER_GPUS = 1  # pretrain_encoder trains on one device (no DDP): a whole node would sit idle


def make_pipeline(cluster: Cluster = CLUSTER):
    """The DAG with the task settings of one cluster profile (``hmarl pipeline compile --cluster``)."""
    checkpoints = cluster.checkpoint_mount  # the training tasks' PVC: resume after a pre-emption

    def data(task, tracked=False):
        return data_step(task, tracked=tracked, cluster=cluster)

    def training(task, gpus=None):
        return training_step(task, gpus=gpus, cluster=cluster)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Raw OHLCV bars -> validated features -> hierarchical multi-agent RL policy -> gate -> promotion",
    )
    def hmarl_pipeline(
        profile: str = "",
        params_yaml: str = DEFAULT_PARAMS_YAML,
        overrides: list = [],  # noqa: B006 - KFP reads pipeline defaults from the signature
        data_uri: str = "",
        mlflow_uri: str = "",
        seeds: list = DEFAULT_SEEDS,
        folds: list = DEFAULT_FOLDS,
    ):
        _dag(data, training, cluster, checkpoints, profile, params_yaml, overrides, data_uri, mlflow_uri,
             seeds, folds)  # fmt: skip

    return hmarl_pipeline


def _dag(data, training, cluster, checkpoints, profile, params_yaml, overrides, data_uri, mlflow_uri, seeds,
         folds):  # fmt: skip
    """The tasks, wired (called inside the pipeline function, whose parameters these are)."""
    # every step receives this text as its `config` parameter, so it is part of each cache key
    config = config_step(
        resolve_config(
            params_yaml=params_yaml,
            profile=profile,
            overrides=overrides,
            data_uri=data_uri,
            mlflow_uri=mlflow_uri,
            seeds=seeds,
            folds=folds,
        ),
        cluster,
    )
    cfg = config.outputs["Output"]
    cfg_file = config.outputs["config_file"]  # the config inside the loops (see components/resolve_config.py)

    ingested = data(ingest(config=cfg))
    validated = data(validate(config=cfg, canonical=ingested.outputs["canonical"]))
    store = data(
        features(
            config=cfg,
            canonical=ingested.outputs["canonical"],
            validation=validated.outputs["report"],
        )
    ).outputs["store"]
    sl = data(sl_cache(config=cfg, store=store), tracked=True).outputs["cache"]
    encoder = training(
        pretrain_encoder(config=cfg, checkpoint_root=checkpoints, store=store, sl_cache=sl), gpus=ENCODER_GPUS
    ).outputs["encoder"]
    trained = {"store": store, "sl_cache": sl, "encoder": encoder}
    symbols_task = training(train_symbols(config=cfg, checkpoint_root=checkpoints, **trained))
    symbols = symbols_task.outputs["model"]
    master = training(
        train_master(config=cfg, checkpoint_root=checkpoints, symbols=symbols, **trained)
    ).outputs["model"]

    with dsl.ParallelFor(seeds, name="seeds") as seed:
        seed_runs = training(stage5(config_file=cfg_file, seed=seed, checkpoint_root=checkpoints, **trained))
    with dsl.ParallelFor(folds, name="folds") as fold:
        fold_runs = training(
            walk_forward(
                config_file=cfg_file,
                fold=fold,
                checkpoint_root=checkpoints,
                symbols=symbols,
                master=master,
                **trained,
            )
        )

    verdict = data(
        gate(
            config=cfg,
            stage5=dsl.Collected(seed_runs.outputs["run"]),
            walk_forward=dsl.Collected(fold_runs.outputs["evaluation"]),
        ),
        tracked=True,
    )
    with dsl.If(verdict.outputs["Output"] == True, name="go"):  # noqa: E712 - a KFP condition, not a bool
        promoted = promote(
            config=cfg,
            gate=verdict.outputs["report"],
            walk_forward=verdict.outputs["evaluations"],
            symbols=symbols,
            master=master,
            **trained,
        )
        registry_step(promoted, cluster)


hmarl_pipeline = make_pipeline(CLUSTER)
