"""Pipeline parameters -> the validated config every step task receives (fails fast on a bad key)."""

from kfp import dsl
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_config(params_yaml: str, profile: str, overrides: list, data_uri: str, mlflow_uri: str) -> str:
    """Apply the profile overlay and overrides to params.yaml, validate, return the config as YAML."""
    import os

    from hmarl.kfp_glue import resolve_config

    return resolve_config(params_yaml, profile, overrides, data_uri, mlflow_uri, env=os.environ)
