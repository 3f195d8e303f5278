"""Pipeline parameters -> the validated config every step task receives (fails fast on a bad key)."""

from kfp import dsl
from kfp.dsl import Artifact, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_config(
    params_yaml: str,
    profile: str,
    overrides: list,
    data_uri: str,
    mlflow_uri: str,
    seeds: list,
    folds: list,
    config_file: Output[Artifact],
) -> str:
    """Apply the profile overlay, the fan-outs (seeds, folds) and overrides to params.yaml, validate,
    check the fan-outs cover what the gate demands; return the config as YAML text, and the same text
    as ``config_file`` for the tasks inside the loops (kfp's local runner replaces every task-output
    parameter passed into a ParallelFor body with the loop item; artifacts pass through intact)."""
    import os

    from hmarl.io import write_text
    from hmarl.kfp_glue import resolve_config

    text = resolve_config(params_yaml, profile, overrides, data_uri, mlflow_uri, os.environ, seeds, folds)
    write_text(config_file.path, text)
    return text
