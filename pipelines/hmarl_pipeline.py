"""The hmarl DAG for Kubeflow Pipelines: the same steps as ``dvc.yaml``, wired through KFP artifacts.

    resolve-config -> ingest -> validate -> features -> ...

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
    seeds        training seeds of the stage5 fan-out
"""

import json
from pathlib import Path

import yaml
from components.features import features
from components.ingest import ingest
from components.resolve_config import resolve_config
from components.validate import validate
from kfp import dsl

from pipelines.cluster import config_step, data_step

PIPELINE_NAME = "hmarl"
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
DEFAULT_PARAMS_YAML = json.dumps(yaml.safe_load(PARAMS_FILE.read_text()))
DEFAULT_SEEDS = [42, 1337, 9001]


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
):
    # every step receives this text as its `config` parameter, so it is part of each cache key
    config = config_step(
        resolve_config(
            params_yaml=params_yaml,
            profile=profile,
            overrides=overrides,
            data_uri=data_uri,
            mlflow_uri=mlflow_uri,
        )
    )
    cfg = config.output

    ingested = data_step(ingest(config=cfg))
    validated = data_step(validate(config=cfg, canonical=ingested.outputs["canonical"]))
    data_step(
        features(
            config=cfg,
            canonical=ingested.outputs["canonical"],
            validation=validated.outputs["report"],
        )
    )
    # Training steps plug in here, one line each, on the GPU pool (pipelines.cluster.training_step);
    # name the features task (`featurized = data_step(features(...))`) and continue:
    #   sl = training_step(sl_cache(config=cfg, store=featurized.outputs["store"]))
    #   encoder = training_step(pretrain_encoder(config=cfg, store=..., sl_cache=sl.outputs["cache"]))
    #   with dsl.ParallelFor(seeds) as seed:
    #       training_step(stage5(config=cfg, seed=seed, ...))
