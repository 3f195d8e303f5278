"""``hmarl pipeline``: compile the Kubeflow DAG, submit or schedule it on a cluster, or run it locally.

    hmarl pipeline compile  [--output pipelines/hmarl_pipeline.yaml]
    hmarl pipeline submit   --host URL [--experiment NAME] [--run-name NAME] [run arguments]
    hmarl pipeline schedule --host URL --cron EXPR [--job-name NAME] [--experiment NAME] [run arguments]
    hmarl pipeline run-local [--workdir .kfp-local] [--cache] [run arguments]

Run arguments set the pipeline parameters: ``--params FILE`` (its text becomes ``params_yaml``),
``--profile``, ``--data-uri``, ``--mlflow-uri``, ``--seeds 42,1337``, ``--folds 0,1,2`` and ``--set
KEY.PATH=VALUE`` (repeatable, the ``overrides`` list). They are validated here before anything is sent;
seeds and folds not given follow the resolved config (``stage5.seeds``, ``walk_forward.folds``).

The DAG lives in ``pipelines/`` and ``components/`` of the source checkout (not in the installed
package): they are found next to this package's ``src/`` folder, or in the current directory.
kfp is imported only by these commands, so ``hmarl step`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

import hmarl
from hmarl.errors import HmarlError
from hmarl.io import write_text
from hmarl.kfp_glue import fan_out, parse_overrides, resolve
from hmarl.pipeline_local import (  # noqa: F401 - re-exported: run-local lives there
    LocalRun,
    local_session,
    read_local_run,
    run_local,
    task_key,
    without_retries,
)

PIPELINE_MODULE = "pipelines.hmarl_pipeline"
DEFAULT_OUTPUT = Path("pipelines") / "hmarl_pipeline.yaml"
DEFAULT_EXPERIMENT = "hmarl"
FAN_OUTS = ("seeds", "folds")  # list pipeline parameters the loops iterate over
SERVICE_ACCOUNT = "hmarl-pipeline"  # manifests/base/rbac.yaml; pipelines/cluster.py Cluster.service_account


# --------------------------------------------------------------------------- the DAG
def repo_root() -> Path:
    """The source checkout holding ``pipelines/``: this package's, else the current directory."""
    for root in (Path(hmarl.__file__).resolve().parents[2], Path.cwd()):
        if (root / "pipelines" / "hmarl_pipeline.py").is_file():
            return root
    raise HmarlError(
        "pipelines/hmarl_pipeline.py not found next to the hmarl sources or in the current directory; "
        "run `hmarl pipeline` from the repository checkout"
    )


def pipeline_module() -> ModuleType:
    root = str(repo_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(PIPELINE_MODULE)


def compile_pipeline(output: str | Path | None = None, cluster: str | None = None) -> Path:
    """Write the pipeline IR YAML to ``output`` (default: pipelines/hmarl_pipeline.yaml of the checkout),
    with the task settings of the named cluster profile (``pipelines/cluster.py``: gke-h100, kind). The
    default output also rewrites the manifests' image tags to the IR's (``pipelines/image_tags.py``)."""
    from kfp import compiler

    module = pipeline_module()
    from pipelines.cluster import UNVERSIONED, profile

    try:
        chosen = profile(cluster)
    except ValueError as exc:
        raise HmarlError(f"--cluster: {exc}") from None
    if UNVERSIONED in chosen.image:
        raise HmarlError(
            f"image {chosen.image}: no commit to tag the images with (not a git checkout); set "
            "HMARL_IMAGE_TAG to the tag of the images you pushed"
        )
    output = Path(output) if output is not None else repo_root() / DEFAULT_OUTPUT
    with tempfile.TemporaryDirectory(prefix="hmarl-compile-") as tmp:
        path = Path(tmp) / "pipeline.yaml"  # the compiler picks the format from the suffix
        compiler.Compiler().compile(module.make_pipeline(chosen), package_path=str(path))
        write_text(output, path.read_text())
    if output.resolve() == (repo_root() / DEFAULT_OUTPUT).resolve():
        from pipelines.image_tags import write_manifest_tags

        write_manifest_tags(repo_root(), chosen)  # the manifests deploy the images the IR names
    return output


@contextmanager
def _package(path: str | None, cluster: str | None = None) -> Iterator[Path]:
    """The given compiled package, or the current code compiled (for ``cluster``) into a temp file."""
    if path:
        if not Path(path).is_file():
            raise HmarlError(f"--package {path}: file not found")
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="hmarl-pipeline-") as tmp:
        yield compile_pipeline(Path(tmp) / "hmarl_pipeline.yaml", cluster)


def ir_defaults(package: Path) -> dict[str, Any]:
    """The pipeline parameters' default values recorded in a compiled package."""
    spec = next(yaml.safe_load_all(package.read_text()))  # then the platform (Kubernetes) spec
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: p.get("defaultValue") for name, p in params.items()}


# --------------------------------------------------------------------------- run arguments
def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline arguments from the command line: only what was given (the rest keeps the IR defaults)."""
    out: dict[str, Any] = {}
    if args.params:
        path = Path(args.params)
        if not path.is_file():
            raise HmarlError(f"--params {path}: file not found")
        out["params_yaml"] = path.read_text()
    for name in ("profile", "data_uri", "mlflow_uri"):
        if getattr(args, name):
            out[name] = getattr(args, name)
    if args.overrides:
        out["overrides"] = parse_overrides(args.overrides)
    for name in FAN_OUTS:
        text = getattr(args, name)
        if not text:
            continue
        try:
            out[name] = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise HmarlError(f"--{name} {text!r}: expected comma-separated integers") from None
        if not out[name]:
            raise HmarlError(f"--{name}: at least one value is needed")
    return out


def check_arguments(arguments: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Resolve the config as the pipeline's first task will, so a bad key fails here, not on the cluster.

    Returns ``arguments`` completed with the fan-outs (seeds, folds) the config asks for, where they were
    not given and differ from the compiled-in defaults: ``--profile full`` brings its five folds along.
    """
    values = {**defaults, **arguments}
    names = ("profile", "overrides", "data_uri", "mlflow_uri")
    given = {k: values[k] for k in names if values.get(k)}
    params_yaml = values.get("params_yaml") or ""
    cfg = resolve(params_yaml, **given, **{k: arguments[k] for k in FAN_OUTS if k in arguments})
    out = dict(arguments)
    for name, wanted in (("seeds", cfg.stage5.seeds), ("folds", cfg.walk_forward.folds)):
        if name not in out and fan_out(name, defaults.get(name)) != wanted:
            out[name] = wanted
    resolve(params_yaml, **given, **{k: out.get(k, defaults.get(k)) for k in FAN_OUTS})  # as the task will
    return out


def _client(host: str, namespace: str | None):
    """A ``kfp.Client``; in a pod with ``KF_PIPELINES_SA_TOKEN_PATH`` set (the retraining CronJob), it
    authenticates with that projected ServiceAccount token, as multi-user Kubeflow requires."""
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"namespace": namespace} if namespace else {}
    if os.environ.get(KF_PIPELINES_SA_TOKEN_ENV):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials()  # reads the path from that variable
    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": we compile v2 IR
        warnings.filterwarnings("ignore", "This client only works", FutureWarning)
        return kfp.Client(host=host, **kwargs)


def normalize_cron(expr: str) -> str:
    """KFP's scheduler takes 6 cron fields (seconds first); a 5-field crontab gets second 0."""
    fields = expr.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise HmarlError(
            f"--cron {expr!r}: expected 5 (crontab) or 6 (with seconds) fields, e.g. '0 3 * * 1' (Mondays 03:00)"
        )
    return " ".join(fields)


# --------------------------------------------------------------------------- cluster commands
def submit(
    host: str,
    arguments: dict[str, Any],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    package: str | None = None,
    namespace: str | None = None,
    cluster: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> str:
    """Start one run on a Kubeflow Pipelines endpoint, as the pipeline ServiceAccount; returns its run id."""
    with _package(package, cluster) as path:
        arguments = check_arguments(arguments, ir_defaults(path))
        client = _client(host, namespace)
        result = client.create_run_from_pipeline_package(
            str(path),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            service_account=service_account,
        )
    return result.run_id


def schedule(
    host: str,
    cron: str,
    arguments: dict[str, Any],
    *,
    job_name: str = "hmarl-retrain",
    experiment: str = DEFAULT_EXPERIMENT,
    package: str | None = None,
    namespace: str | None = None,
    cluster: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> str:
    """Create a recurring run (scheduled retraining) that runs as the pipeline ServiceAccount; returns its
    id. One run at a time, no backfill."""
    cron = normalize_cron(cron)
    with _package(package, cluster) as path:
        arguments = check_arguments(arguments, ir_defaults(path))
        client = _client(host, namespace)
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            params=arguments,
            pipeline_package_path=str(path),
            max_concurrency=1,
            no_catchup=True,
            service_account=service_account,
        )
    return job.recurring_run_id


# --------------------------------------------------------------------------- argparse
def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline parameters (default: the compiled-in values)")
    g.add_argument("--params", metavar="FILE", help="params file whose text becomes params_yaml")
    g.add_argument("--profile", default="", help="profile overlay, e.g. smoke or full")
    g.add_argument("--data-uri", default="", help="bars to ingest: path or object-store URI")
    g.add_argument("--mlflow-uri", default="", help="MLflow tracking URI for the training steps")
    g.add_argument("--seeds", default="", metavar="S1,S2,...", help="stage5 seeds (default: stage5.seeds)")
    g.add_argument(
        "--folds", default="", metavar="K1,K2,...", help="walk-forward folds (default: walk_forward.folds)"
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one parameter (repeatable), as for `hmarl step`",
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080"
    )
    p.add_argument("--namespace", default=None, help="user namespace (multi-user Kubeflow)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name (created if missing)")
    p.add_argument(
        "--package", default=None, help="compiled pipeline YAML (default: compile the current code)"
    )
    p.add_argument("--cluster", default=None, help="cluster profile to compile for (default: gke-h100)")
    p.add_argument(
        "--service-account",
        default=SERVICE_ACCOUNT,
        help=f"identity of the run's pods (default: {SERVICE_ACCOUNT})",
    )


def _cmd_compile(args: argparse.Namespace) -> int:
    print(f"wrote {compile_pipeline(args.output, args.cluster)}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    run_id = submit(
        args.host,
        run_arguments(args),
        experiment=args.experiment,
        run_name=args.run_name,
        package=args.package,
        namespace=args.namespace,
        cluster=args.cluster,
        service_account=args.service_account,
    )
    print(f"submitted run {run_id} to {args.host} (experiment {args.experiment})")
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    job_id = schedule(
        args.host,
        args.cron,
        run_arguments(args),
        job_name=args.job_name,
        experiment=args.experiment,
        package=args.package,
        namespace=args.namespace,
        cluster=args.cluster,
        service_account=args.service_account,
    )
    print(f"scheduled recurring run {job_id} ({normalize_cron(args.cron)}) on {args.host}")
    return 0


def _cmd_run_local(args: argparse.Namespace) -> int:
    run = run_local(run_arguments(args), args.workdir, cache=args.cache)
    print(f"local run finished: {run.run_dir or 'nothing executed'}")
    if run.cached:
        print(f"  cache hits (outputs of an earlier run): {', '.join(run.cached)}")
    for task, outputs in run.outputs.items():
        for name, path in outputs.items():
            print(f"  {task}.{name}: {path}")
    print(json.dumps(run.metrics, indent=2, sort_keys=True))
    if "gate" in run.output_parameters:
        go = run.output_parameters["gate"].get("Output")
        print(
            f"gate verdict: {'go' if go else 'no-go'}; promote {'ran' if 'promote' in run.outputs else 'skipped'}"
        )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``hmarl pipeline <compile|submit|schedule|run-local|sync>``."""
    p = sub.add_parser(
        "pipeline",
        help="compile / submit / schedule / run-local the Kubeflow pipeline",
        description="Compile the Kubeflow DAG, submit or schedule it on a cluster, or run it locally.",
    )
    cmds = p.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")

    c = cmds.add_parser("compile", help="write the pipeline IR YAML", description=compile_pipeline.__doc__)
    c.add_argument("--output", default=None, help=f"IR file (default: {DEFAULT_OUTPUT} of the checkout)")
    c.add_argument("--cluster", default=None, help="cluster profile: gke-h100 (default) or kind (CPU only)")
    c.set_defaults(func=_cmd_compile)

    c = cmds.add_parser("submit", help="start a run on a Kubeflow endpoint", description=submit.__doc__)
    _add_cluster_args(c)
    c.add_argument("--run-name", default=None, help="run name shown in the UI")
    _add_run_args(c)
    c.set_defaults(func=_cmd_submit)

    c = cmds.add_parser(
        "schedule", help="create a recurring run (scheduled retraining)", description=schedule.__doc__
    )
    _add_cluster_args(c)
    c.add_argument("--cron", required=True, help="'M H DoM Mon DoW' or with a leading seconds field")
    c.add_argument("--job-name", default="hmarl-retrain", help="recurring run name")
    _add_run_args(c)
    c.set_defaults(func=_cmd_schedule)

    c = cmds.add_parser(
        "run-local", help="run the DAG here (kfp SubprocessRunner)", description=run_local.__doc__
    )
    c.add_argument(
        "--workdir", default=".kfp-local", help="outputs/ and cache/ go here (default: .kfp-local)"
    )
    c.add_argument("--cache", action="store_true", help="reuse outputs of unchanged cached tasks")
    _add_run_args(c)
    c.set_defaults(func=_cmd_run_local)

    from hmarl.wiring.dvc import add_sync_parser

    add_sync_parser(cmds)
