"""Everything the pipeline assumes about the cluster, in one place: images, GPU pool, env sources, resources.

The names match the Dockerfiles (image names, the non-root UID) and ``manifests/`` (the GPU pool of
``manifests/base/gpu-pool.env``, the Secret / ConfigMap / PVC names of ``manifests/README.md``);
tests/test_kfp_pipeline.py checks them against the manifests. Change a name here, recompile (``hmarl pipeline compile``), nothing else moves.
Task settings are applied by :func:`data_step` and :func:`training_step`, so a new step in
``hmarl_pipeline.py`` is one call. The local runner ignores all Kubernetes settings.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask

from hmarl import __version__

IMAGE_TAG_ENV = "HMARL_IMAGE_TAG"  # set in the images (build arg), where there is no git checkout
CLUSTER_ENV = "HMARL_CLUSTER"  # the profile compiled when none is named (``--cluster``)


def image_tag() -> str:
    """``<package version>-<commit>`` (``-dirty`` with uncommitted changes): a rebuilt image gets a new tag,
    so KFP's cache (keyed on the image string) never serves outputs of other code. ``HMARL_IMAGE_TAG``
    wins (the images carry their own tag; CI may set a digest-pinned reference's tag)."""
    if os.environ.get(IMAGE_TAG_ENV):
        return os.environ[IMAGE_TAG_ENV]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"{__version__}-{UNVERSIONED}"
    return f"{__version__}-{head}" + ("-dirty" if dirty else "")


UNVERSIONED = "unversioned"  # no git, no HMARL_IMAGE_TAG: `hmarl pipeline compile` refuses such a tag


@dataclass(frozen=True)
class GpuPool:
    accelerator: str | None = "nvidia.com/gpu"  # extended resource name of the device plugin; None: CPU
    gpus_per_task: int = 8  # one process per GPU (torchrun); the seed's setup is one 8-GPU node
    node_selector_key: str = "cloud.google.com/gke-accelerator"  # GKE's label; elsewhere: label the pool
    node_selector_value: str = "nvidia-h100-80gb"
    toleration_key: str = "nvidia.com/gpu"  # taint that keeps other pods off the GPU nodes
    toleration_effect: str = "NoSchedule"
    shm_size: str = "64Gi"  # memory-backed /dev/shm (NCCL, 8 processes; the runtime default is 64 MiB)


@dataclass(frozen=True)
class Resources:
    cpu: str  # request (Kubernetes quantity)
    memory: str  # request
    memory_limit: str  # OOM-kill boundary; no CPU limit (throttling only slows the step)


@dataclass(frozen=True)
class Retry:
    """For pre-empted GPU nodes: the step resumes from its checkpoint on the PVC."""

    num_retries: int = 3
    backoff_duration: str = "60s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "3600s"


@dataclass(frozen=True)
class EnvSource:
    """A Secret or ConfigMap whose keys become environment variables (values never enter the IR)."""

    kind: Literal["secret", "config_map"]
    name: str
    env: tuple[tuple[str, str], ...]  # (environment variable, key); one key may feed several variables
    optional: bool = False  # the pod starts without it

    def groups(self) -> list[dict[str, str]]:
        """key -> variable maps for kfp-kubernetes, which takes each key once per call."""
        out: list[dict[str, str]] = []
        for var, key in self.env:
            group = next((g for g in out if key not in g), None)
            if group is None:
                out.append(group := {})
            group[key] = var
        return out


@dataclass(frozen=True)
class Cluster:
    name: str = "gke-h100"
    image: str = f"ghcr.io/hmarl/hmarl:{image_tag()}"  # Dockerfile (CPU)
    gpu_image: str = f"ghcr.io/hmarl/hmarl-gpu:{image_tag()}"  # Dockerfile.gpu (CUDA runtime)
    # the images' non-root USER, numeric so the kubelet can enforce runAsNonRoot (Pod Security
    # "restricted"); KFP >= 2.2 mounts emptyDirs over its artifact paths, so non-root tasks can write them
    run_as_user: int = 10001
    run_as_group: int = 10001
    gpu_pool: GpuPool = GpuPool()
    data_resources: Resources = Resources(cpu="2", memory="8Gi", memory_limit="16Gi")
    training_resources: Resources = Resources(cpu="48", memory="384Gi", memory_limit="384Gi")
    retry: Retry = Retry()
    checkpoint_pvc: str = "hmarl-checkpoints"
    checkpoint_mount: str = "/checkpoints"
    s3: EnvSource = EnvSource(
        "secret",
        "hmarl-s3",
        (
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_ENDPOINT_URL", "endpoint_url"),  # boto3 / s3fs / pyarrow: MinIO or the AWS endpoint
            ("MLFLOW_S3_ENDPOINT_URL", "endpoint_url"),  # MLflow's artifact client
        ),
    )
    # the pipeline identity of MLflow's basic-auth app (log, register, move aliases)
    mlflow: EnvSource = EnvSource(
        "secret",
        "hmarl-mlflow",
        (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")),
    )
    pipeline_env: EnvSource = EnvSource(  # the cluster's tracking server, when the run names none
        "config_map", "hmarl-pipeline-env", (("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),), optional=True
    )
    # which sources each kind of task gets: data steps read s3:// data URIs; training steps also log
    # to MLflow; resolve-config picks the tracking server (see hmarl.kfp_glue.resolve_config)
    data_env: tuple[str, ...] = ("s3",)
    training_env: tuple[str, ...] = ("s3", "mlflow")
    config_env: tuple[str, ...] = ("pipeline_env",)
    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/part-of": "hmarl"})
    service_account: str = "hmarl-pipeline"  # submit / schedule run the pipeline as this identity


# Named clusters (``hmarl pipeline compile --cluster NAME``). gke-h100: 8-GPU H100 nodes (GKE's label and
# taint). kind: a laptop cluster with no accelerator: no GPU request, node selector or toleration, the
# training tasks on the CPU image with small requests (the smoke profile fits; see README "kind").
PROFILES: dict[str, Cluster] = {
    "gke-h100": Cluster(),
    "kind": Cluster(
        name="kind",
        gpu_image=Cluster().image,
        gpu_pool=GpuPool(
            accelerator=None, gpus_per_task=0, node_selector_key="", node_selector_value="", toleration_key=""
        ),  # fmt: skip
        data_resources=Resources(cpu="500m", memory="1Gi", memory_limit="4Gi"),
        training_resources=Resources(cpu="1", memory="2Gi", memory_limit="6Gi"),
    ),
}


def profile(name: str | None = None) -> Cluster:
    """The named cluster profile (default: ``HMARL_CLUSTER``, else gke-h100)."""
    name = name or os.environ.get(CLUSTER_ENV) or "gke-h100"
    if name not in PROFILES:
        raise ValueError(f"cluster {name!r}: unknown (known: {', '.join(sorted(PROFILES))})")
    return PROFILES[name]


CLUSTER = PROFILES["gke-h100"]
IMAGE = CLUSTER.image  # base image of every CPU component (components/*.py); the same in every profile
GPU_IMAGE = CLUSTER.gpu_image  # base image of the training components (kind: swapped for IMAGE)


def use_env(task: PipelineTask, sources: tuple[str, ...], cluster: Cluster = CLUSTER) -> PipelineTask:
    """Environment variables from the named Secrets / ConfigMaps of ``cluster``."""
    for name in sources:
        src: EnvSource = getattr(cluster, name)
        use = kubernetes.use_secret_as_env if src.kind == "secret" else kubernetes.use_config_map_as_env
        for key_to_env in src.groups():
            use(task, src.name, key_to_env, optional=src.optional)
    return task


def _pod(task: PipelineTask, resources: Resources, cluster: Cluster) -> PipelineTask:
    task.set_cpu_request(resources.cpu)
    task.set_memory_request(resources.memory)
    task.set_memory_limit(resources.memory_limit)
    for key, value in cluster.labels.items():
        kubernetes.add_pod_label(task, key, value)
    kubernetes.set_security_context(
        task, run_as_user=cluster.run_as_user, run_as_group=cluster.run_as_group, run_as_non_root=True
    )
    return task


def config_step(task: PipelineTask, cluster: Cluster = CLUSTER) -> PipelineTask:
    """The resolve-config task: never cached, since it reads the cluster's MLflow URI from its
    environment; its output text keys the downstream caches, so those still hit when nothing changed."""
    task.set_caching_options(enable_caching=False)
    _pod(task, Resources(cpu="250m", memory="512Mi", memory_limit="1Gi"), cluster)
    return use_env(task, cluster.config_env, cluster)


def data_step(task: PipelineTask, tracked: bool = False, cluster: Cluster = CLUSTER) -> PipelineTask:
    """CPU node, cached: same config and inputs => KFP reuses the outputs instead of recomputing.
    ``tracked``: the step logs to MLflow (sl_cache, gate, promote), so it also gets the MLflow env."""
    task.set_caching_options(enable_caching=True)
    _pod(task, cluster.data_resources, cluster)
    return use_env(task, cluster.training_env if tracked else cluster.data_env, cluster)


def registry_step(task: PipelineTask, cluster: Cluster = CLUSTER) -> PipelineTask:
    """CPU node, never cached: the task changes the MLflow model registry (promote), so a rerun with the
    same inputs must act again, not replay the last decision."""
    data_step(task, tracked=True, cluster=cluster)
    task.set_caching_options(enable_caching=False)
    return task


def training_step(task: PipelineTask, gpus: int | None = None, cluster: Cluster = CLUSTER) -> PipelineTask:
    """GPU pool, never cached (training is stochastic and logs a new MLflow run), retried on pre-emption
    with backoff; the checkpoint PVC is mounted so a retry resumes where the killed attempt stopped.

    ``gpus``: what the step uses (pretrain_encoder: 1); default a whole node (one DDP process per GPU).
    GPU tasks get a memory-backed ``/dev/shm``. A CPU-only profile (kind) requests no accelerator and
    sets no node selector or toleration; the task runs on the CPU image."""
    pool = cluster.gpu_pool
    task.set_caching_options(enable_caching=False)
    _pod(task, cluster.training_resources, cluster)
    if pool.accelerator:
        task.set_accelerator_type(pool.accelerator)
        task.set_accelerator_limit(gpus if gpus is not None else pool.gpus_per_task)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=pool.shm_size)  # fmt: skip
    else:
        task.container_spec.image = cluster.image
    if pool.node_selector_key:
        kubernetes.add_node_selector(task, pool.node_selector_key, pool.node_selector_value)
    if pool.toleration_key:
        kubernetes.add_toleration(
            task, key=pool.toleration_key, operator="Exists", effect=pool.toleration_effect
        )
    retry = cluster.retry
    task.set_retry(
        num_retries=retry.num_retries,
        backoff_duration=retry.backoff_duration,
        backoff_factor=retry.backoff_factor,
        backoff_max_duration=retry.backoff_max_duration,
    )
    kubernetes.mount_pvc(task, pvc_name=cluster.checkpoint_pvc, mount_path=cluster.checkpoint_mount)
    return use_env(task, cluster.training_env, cluster)
