"""The MLflow server's identities (basic-auth app), made once per deployment by an admin:

- the pipeline identity: MANAGE on the ``hmarl`` experiment and registered model (log runs and artifacts,
  register versions, move the ``champion`` / ``previous-champion`` aliases);
- the serving identity (``hmarl act``): READ on both, nothing else.

The server runs with ``default_permission = NO_PERMISSIONS``: any other account sees nothing.

    python -m hmarl.tracking.identities      # the bootstrap Job of manifests/base/mlflow-auth.yaml

reads the admin (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``), ``HMARL_PIPELINE_USER`` / ``_PASSWORD``
and ``HMARL_READER_USER`` / ``_PASSWORD`` from the environment (on the cluster: Secrets). Idempotent:
existing users get the given password again.
"""

from __future__ import annotations

import os
import sys

from hmarl.errors import HmarlError

EXPERIMENT = "hmarl"
MODEL = "hmarl"


def _user(client, name: str, password: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_user(name, password)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(name, password)


def ensure_identities(uri: str, pipeline: tuple[str, str], reader: tuple[str, str],
                      experiment: str = EXPERIMENT, model: str = MODEL) -> None:  # fmt: skip
    """Users, the experiment and the registered model, and the two identities' permissions on them.
    The caller's MLFLOW_TRACKING_USERNAME / _PASSWORD must be an admin's."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from hmarl.tracking.remote import check_server

    check_server(uri)
    auth = get_app_client("basic-auth", tracking_uri=uri)
    _user(auth, *pipeline)
    _user(auth, *reader)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    try:
        client.create_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for name, permission in ((pipeline[0], "MANAGE"), (reader[0], "READ")):
        auth.grant_user_permission(name, "experiment", exp_id, permission)
        auth.grant_user_permission(name, "registered_model", model, permission)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise HmarlError(f"{name} is not set (on the cluster: from the Secret hmarl-mlflow-admin)")
    return value


def main() -> int:
    try:
        uri = _env("MLFLOW_TRACKING_URI")
        _env("MLFLOW_TRACKING_USERNAME")
        pipeline = (_env("HMARL_PIPELINE_USER"), _env("HMARL_PIPELINE_PASSWORD"))
        reader = (_env("HMARL_READER_USER"), _env("HMARL_READER_PASSWORD"))
        ensure_identities(uri, pipeline, reader)
    except HmarlError as exc:
        print(f"hmarl: error: {exc}", file=sys.stderr)
        return 2
    print(f"identities ready on {uri}: pipeline {pipeline[0]!r} (MANAGE), reader {reader[0]!r} (READ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
