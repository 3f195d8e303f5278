"""The cluster manifests, offline: `kubectl kustomize` builds each overlay and the training job, every
object validates against the Kubernetes 1.32 schemas (strict), and the security, wiring and policy
properties the issue asks for hold on what would actually be applied."""

from __future__ import annotations

import base64
import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.32.0"
NAMESPACE = "hmarl"
OVERLAYS = ["overlays/local", "overlays/prod"]
BUILDS = [*OVERLAYS, "training"]
APP_UID = 10001  # USER in Dockerfile / Dockerfile.gpu
PROJECT_IMAGES = {"ghcr.io/hmarl/hmarl", "ghcr.io/hmarl/hmarl-gpu"}  # Dockerfile, Dockerfile.gpu
GPU_POOL_KEYS = {
    "accelerator_type",
    "accelerator_limit",
    "node_selector_key",
    "node_selector_value",
    "toleration_key",
    "toleration_operator",
    "toleration_effect",
}
ALLOWED_VOLUME_TYPES = {
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
}
SECRET_LIKE_ENV = re.compile(r"(PASSWORD|SECRET_ACCESS_KEY|ACCESS_KEY_ID|TOKEN|SECRET)$")
COMPILED_PIPELINE = REPO / "pipelines" / "hmarl_pipeline.yaml"
HMARL_POD_LABEL = {"app.kubernetes.io/part-of": "hmarl"}  # what pipelines/cluster.py puts on KFP tasks


# ---- building -------------------------------------------------------------------------------------
def _kustomize(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    proc = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {target}:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"{target} built nothing"
    return docs


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict]]:
    return {target: _kustomize(target) for target in BUILDS}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request, builds) -> tuple[str, list[dict]]:
    return request.param, builds[request.param]


def _name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template {metadata, spec}) of every workload kind used here."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        return [(_name(obj), spec["template"])]
    if kind == "CronJob":
        return [(_name(obj), spec["jobTemplate"]["spec"]["template"])]
    if kind == "PyTorchJob":
        return [(f"{_name(obj)}/{role}", rs["template"]) for role, rs in spec["pytorchReplicaSpecs"].items()]
    return []


def all_pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    return [pt for d in docs for pt in pod_templates(d)]


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def _all_containers(builds: dict[str, list[dict]]):
    for target, docs in builds.items():
        for where, tpl in all_pod_templates(docs):
            for c in containers(tpl["spec"]):
                yield f"{target}:{where}/{c['name']}", tpl["spec"], c


# ---- schema validation ----------------------------------------------------------------------------
def _validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _schema_checked(doc: dict) -> list[tuple[str, dict]]:
    """(where, object) to validate: the object itself, or for a CRD without a schema in
    kubernetes-validate (PyTorchJob) its pod templates, which are core PodTemplateSpecs."""
    if not doc["apiVersion"].startswith("kubeflow.org/"):
        return [(_name(doc), doc)]
    return [
        (where, {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tpl})
        for where, tpl in pod_templates(doc)
    ]


@pytest.mark.parametrize("target", BUILDS)
def test_every_object_validates_against_k8s_schemas(builds, target):
    import kubernetes_validate

    errors = []
    for doc in builds[target]:
        for where, obj in _schema_checked(doc):
            try:
                _validate(obj)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                errors.append(f"{where}: {str(exc).splitlines()[0]}")
    assert not errors, "\n".join(errors)


def test_validation_is_strict():
    """Guard against a silently lenient validator: an unknown field must be rejected."""
    import kubernetes_validate

    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dataa": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_everything_in_the_hmarl_namespace_under_restricted_admission(builds):
    for target, docs in builds.items():
        for doc in docs:
            if doc["kind"] == "Namespace":
                labels = doc["metadata"]["labels"]
                assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
                assert labels["pod-security.kubernetes.io/warn"] == "restricted"
            else:
                assert doc["metadata"].get("namespace") == NAMESPACE, f"{target}:{_name(doc)}"
    for target in OVERLAYS:
        _find(builds[target], "Namespace", NAMESPACE)


# ---- pod security --------------------------------------------------------------------------------
def test_restricted_pod_security_on_every_pod_template(builds):
    count = 0
    for where, pod, c in _all_containers(builds):
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert csc.get("allowPrivilegeEscalation") is False, where
        assert csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc["capabilities"].get("add"), (
            where
        )
        assert csc.get("readOnlyRootFilesystem") is True, where
        assert not csc.get("privileged") and csc.get("runAsUser", 1) > 0, where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert not any(p.get("hostPort") for p in c.get("ports", [])), where
        # a read-only root needs a writable /tmp, from an emptyDir
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp, f"{where}: no /tmp mount"
        (vol,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
        assert "emptyDir" in vol, where
        for v in pod.get("volumes", []):
            assert set(v) - {"name"} <= ALLOWED_VOLUME_TYPES, f"{where}: volume {v['name']}"
        count += 1
    assert count >= 7  # mlflow, postgres, cronjob (x2 overlays), minio, bucket job, pytorch master/worker


def test_project_image_pods_run_as_the_image_user(builds):
    seen = set()
    for where, pod, c in _all_containers(builds):
        repo = c["image"].rpartition(":")[0]
        if repo in PROJECT_IMAGES:
            seen.add(repo)
            assert pod["securityContext"]["runAsUser"] == APP_UID, where
    assert seen == PROJECT_IMAGES


def test_resources_on_every_container(builds):
    from kubernetes.utils import parse_quantity

    for where, _, c in _all_containers(builds):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= res.get(kind, {}).keys(), f"{where}: {kind} {res.get(kind)}"
        for name, req in res["requests"].items():
            assert parse_quantity(req) <= parse_quantity(res["limits"][name]), (
                f"{where}: {name} request > limit"
            )


def test_no_latest_or_untagged_images(builds):
    for where, _, c in _all_containers(builds):
        image = c["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert "@sha256:" in image or (tag and tag != "latest"), f"{where}: image {image}"


def test_manifest_images_carry_the_compiled_pipelines_tag(builds):
    """The CronJob, Jobs and PyTorchJob run the very images the IR's tasks run: ``<version>-<commit>``,
    never the bare, mutable version tag a rebuild would silently replace."""
    from hmarl import __version__

    spec, _ = _compiled_pipeline()
    ir_tags = {}
    for exe in spec["deploymentSpec"]["executors"].values():
        name, _, tag = exe["container"]["image"].rpartition(":")
        ir_tags.setdefault(name, set()).add(tag)
    assert set(ir_tags) == PROJECT_IMAGES and all(len(t) == 1 for t in ir_tags.values()), ir_tags
    seen = set()
    for where, _, c in _all_containers(builds):
        name, _, tag = c["image"].rpartition(":")
        if name in PROJECT_IMAGES:
            seen.add(name)
            assert {tag} == ir_tags[name], (
                f"{where}: {c['image']} (IR: {ir_tags[name]}); run hmarl pipeline compile"
            )
            assert tag != __version__ and tag.startswith(f"{__version__}-"), f"{where}: mutable tag {tag}"
    assert seen == PROJECT_IMAGES


def test_compile_rewrites_the_manifest_tags(tmp_path):
    """pipelines/image_tags.py: the generated images: list is replaced in place (not appended twice), a
    hand-written one is refused, and kustomize renders the new tag into every project container."""
    import dataclasses

    from pipelines.cluster import CLUSTER
    from pipelines.image_tags import with_images, write_manifest_tags

    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    cluster = dataclasses.replace(
        CLUSTER,
        image="ghcr.io/hmarl/hmarl:9.9.9-feedbeef",
        gpu_image="ghcr.io/hmarl/hmarl-gpu:9.9.9-feedbeef",
    )
    for _ in range(2):
        write_manifest_tags(tmp_path, cluster)
    text = (tmp_path / "manifests/base/kustomization.yaml").read_text()
    assert text.count("images:") == 1 and "9.9.9-feedbeef" in text
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(tmp_path / "manifests/overlays/prod")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        images = set(re.findall(r"image: (ghcr\.io/hmarl/hmarl\S*)", out))
        assert images == {"ghcr.io/hmarl/hmarl:9.9.9-feedbeef"}, images
    with pytest.raises(ValueError, match="hand-written"):
        with_images("resources: []\nimages:\n  - name: x\n    newTag: '1'\n", {"x": "2"})


def test_command_variables_are_defined(builds):
    """Every $(VAR) in command/args is defined in the container env (else the kubelet passes it literally)."""
    configmaps = {d["metadata"]["name"]: d for t in OVERLAYS for d in builds[t] if d["kind"] == "ConfigMap"}
    for where, _, c in _all_containers(builds):
        defined = {e["name"] for e in c.get("env", [])}
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                defined |= set(configmaps[src["configMapRef"]["name"]]["data"])
        used = set(re.findall(r"\$\((\w+)\)", " ".join(c.get("command", []) + c.get("args", []))))
        assert used <= defined, f"{where}: undefined {used - defined}"


# ---- RBAC -------------------------------------------------------------------------------------------
def test_rbac_least_privilege(overlay):
    target, docs = overlay
    assert not [d for d in docs if d["kind"].startswith("Cluster")], "no cluster-wide RBAC"
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert {"hmarl-pipeline", "hmarl-scheduler"} <= accounts
    for role in roles.values():
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), f"{_name(role)}: wildcard in {key}"
            assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"])
            if {"secrets", "configmaps"} & set(rule["resources"]):
                assert rule.get("resourceNames") and set(rule["verbs"]) <= {"get"}, f"{_name(role)}: {rule}"
    for rb in (d for d in docs if d["kind"] == "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] in roles
        assert all(s["kind"] == "ServiceAccount" and s["name"] in accounts for s in rb["subjects"])
    # pods run as the accounts that exist
    for where, tpl in all_pod_templates(docs):
        sa = tpl["spec"].get("serviceAccountName")
        assert sa is None or sa in accounts, f"{where}: {sa}"


# ---- NetworkPolicy: a small evaluator of the policies as built -------------------------------------
@dataclass
class Endpoint:
    labels: dict = field(default_factory=dict)
    namespace_labels: dict = field(default_factory=lambda: {"kubernetes.io/metadata.name": NAMESPACE})
    ip: str | None = None  # an address outside the cluster


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"evaluator handles matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        if ep.ip is None:
            return False
        ip = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(x) for x in block.get("except", [])
        )
    if ep.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ep.namespace_labels):
            return False
    elif ep.namespace_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
        return False
    return _selects(peer.get("podSelector", {}), ep.labels)


def _allowed(
    policies: list[dict], direction: str, subject: Endpoint, peer: Endpoint, port: int, proto: str
) -> bool:
    """Is traffic allowed on the subject pod's side (Ingress: peer -> subject; Egress: subject -> peer)?"""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    if subject.namespace_labels.get("kubernetes.io/metadata.name") != NAMESPACE:
        return True  # these policies govern pods of their own namespace only
    selecting = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            port_ok = not rule.get("ports") or any(
                p.get("port") == port and p.get("protocol", "TCP") == proto for p in rule["ports"]
            )
            peer_ok = not rule.get(peers_key) or any(_peer_matches(x, peer) for x in rule[peers_key])
            if port_ok and peer_ok:
                return True
    return False


def can_connect(policies, src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> bool:
    egress = _allowed(policies, "Egress", src, dst, port, proto) if src.ip is None else True
    ingress = _allowed(policies, "Ingress", dst, src, port, proto) if dst.ip is None else True
    return egress and ingress


def _pod_labels(docs: list[dict], kind: str, name: str) -> dict:
    return pod_templates(_find(docs, kind, name))[0][1]["metadata"]["labels"]


def test_network_policy_default_denies_ingress(overlay):
    _, docs = overlay
    deny = _find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    # hmarl's own pods only: applied where KFP runs (standalone KFP shares the namespace), KFP's pods
    # (ml-pipeline, metadata-grpc, its object store: no part-of label) stay reachable
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "hmarl"}}
    kfp_pod = {"app": "ml-pipeline", "application-crd-id": "kubeflow-pipelines"}
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        assert not _selects(policy["spec"]["podSelector"], kfp_pod), policy["metadata"]["name"]


def test_network_policy_allows_exactly_the_intended_paths(overlay, builds):
    target, docs = overlay
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    mlflow = Endpoint(_pod_labels(docs, "Deployment", "mlflow"))
    postgres = Endpoint(_pod_labels(docs, "StatefulSet", "postgres"))
    trainer = Endpoint(_pod_labels(builds["training"], "PyTorchJob", "hmarl-train-symbols"))
    kfp_task = Endpoint(HMARL_POD_LABEL)
    stranger = Endpoint({"app": "anything-else"})  # e.g. KFP's own driver pods
    other_ns = Endpoint(HMARL_POD_LABEL, {"kubernetes.io/metadata.name": "default"})
    dns = Endpoint({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
    internet = Endpoint(ip="52.219.170.1")

    for client in (kfp_task, trainer):
        assert can_connect(policies, client, mlflow, 5000)
        assert not can_connect(policies, client, postgres, 5432)
    assert not can_connect(policies, stranger, mlflow, 5000)
    assert not can_connect(policies, other_ns, mlflow, 5000)
    assert not can_connect(policies, kfp_task, mlflow, 22)
    assert can_connect(policies, mlflow, postgres, 5432)
    assert not can_connect(policies, postgres, mlflow, 5000)  # labelled hmarl, but it opens no connections
    assert can_connect(policies, mlflow, dns, 53, "UDP") and can_connect(policies, mlflow, dns, 53, "TCP")
    assert not can_connect(policies, mlflow, stranger, 8080)
    assert not can_connect(policies, postgres, internet, 443)
    assert can_connect(policies, trainer, trainer, 23456)  # torchrun rendezvous between nodes
    if target == "overlays/local":
        minio = Endpoint(_pod_labels(docs, "Deployment", "minio"))
        bucket_job = Endpoint(_pod_labels(docs, "Job", "minio-create-bucket"))
        for client in (mlflow, kfp_task, bucket_job):
            assert can_connect(policies, client, minio, 9000)
        assert not can_connect(policies, stranger, minio, 9000)
        assert not can_connect(policies, mlflow, internet, 443)
        assert not can_connect(policies, minio, internet, 443)
    else:
        assert can_connect(policies, mlflow, internet, 443)  # the external S3 endpoint
        assert not can_connect(policies, mlflow, internet, 80)


# ---- wiring: Secrets, ConfigMaps, PVCs, Services ---------------------------------------------------
def _refs(docs: list[dict], kind: str, *, required_only: bool = False) -> set[tuple[str, str | None]]:
    """(name, key) of every Secret/ConfigMap a container reads; key None for a whole-object envFrom."""
    ref, whole = ("secretKeyRef", "secretRef") if kind == "Secret" else ("configMapKeyRef", "configMapRef")
    out = set()
    for _, tpl in all_pod_templates(docs):
        for c in containers(tpl["spec"]):
            for e in c.get("env", []):
                r = e.get("valueFrom", {}).get(ref)
                if r and not (required_only and r.get("optional")):
                    out.add((r["name"], r["key"]))
            for src in c.get("envFrom", []):
                if whole in src and not (required_only and src[whole].get("optional")):
                    out.add((src[whole]["name"], None))
    return out


def _compiled_pipeline() -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec executors) of the committed KFP IR."""
    if not COMPILED_PIPELINE.exists():
        pytest.skip(f"{COMPILED_PIPELINE.relative_to(REPO)} not compiled yet")
    spec, platform = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_credentials_only_from_secrets(builds):
    for where, _, c in _all_containers(builds):
        for e in c.get("env", []):
            if SECRET_LIKE_ENV.search(e["name"]):
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {e['name']} is not from a Secret"


def test_local_secrets_exist_with_dev_values_only(builds):
    docs = builds["overlays/local"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for name, key in _refs(docs, "Secret", required_only=True) | _refs(
        builds["training"], "Secret", required_only=True
    ):
        assert name in secrets, f"Secret {name} referenced but not generated"
        assert key is None or key in secrets[name]["data"], f"Secret {name} has no key {key}"
    for secret in secrets.values():
        for key, value in secret["data"].items():
            if re.search(r"password|secret", key, re.I):
                assert base64.b64decode(value).decode().startswith("dev-only-"), (
                    f"{secret['metadata']['name']}.{key}"
                )


def test_prod_carries_no_secret_data_and_documents_every_key(builds):
    docs = builds["overlays/prod"]
    assert not [d for d in docs if d["kind"] == "Secret" and (d.get("data") or d.get("stringData"))]
    readme = (MANIFESTS / "README.md").read_text()
    refs = _refs(docs, "Secret") | _refs(builds["training"], "Secret")
    assert {name for name, _ in refs} >= {"hmarl-postgres", "hmarl-s3", "hmarl-mlflow", "hmarl-mlflow-admin",
                                          "hmarl-mlflow-reader"}  # fmt: skip
    for name, key in refs:
        assert name in readme and (key is None or key in readme), (
            f"Secret {name} key {key} not in manifests/README.md"
        )


def test_configmap_refs_resolve(builds):
    for target in OVERLAYS:
        cms = {d["metadata"]["name"]: d["data"] for d in builds[target] if d["kind"] == "ConfigMap"}
        for name, key in _refs(builds[target], "ConfigMap") | _refs(builds["training"], "ConfigMap"):
            assert name in cms and (key is None or key in cms[name]), f"{target}: ConfigMap {name}:{key}"


def test_object_store_per_overlay(builds):
    local = builds["overlays/local"]
    endpoint = base64.b64decode(_find(local, "Secret", "hmarl-s3")["data"]["endpoint_url"]).decode()
    minio_svc = _find(local, "Service", "minio")["spec"]["ports"][0]["port"]
    assert urlparse(endpoint).netloc == f"minio.{NAMESPACE}.svc.cluster.local:{minio_svc}"
    assert not [d for d in builds["overlays/prod"] if d["metadata"]["name"] == "minio"]
    for target in OVERLAYS:
        data = _find(builds[target], "ConfigMap", "hmarl-object-store")["data"]
        assert data["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://"), target


def test_volume_claims_exist_and_checkpoint_access_modes(builds):
    for target in OVERLAYS:
        pvcs = {d["metadata"]["name"]: d for d in builds[target] if d["kind"] == "PersistentVolumeClaim"}
        for where, tpl in all_pod_templates(builds[target]) + all_pod_templates(builds["training"]):
            for v in tpl["spec"].get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in pvcs, f"{target}: {where}"
        modes = pvcs["hmarl-checkpoints"]["spec"]["accessModes"]
        # RWX: the training tasks of the ParallelFor loops run at once on different nodes; one kind node: RWO
        assert modes == (["ReadWriteOnce"] if target == "overlays/local" else ["ReadWriteMany"]), target
        # the tasks' group may write the volume root: a Job mounts it once with fsGroup 10001
        job = _find(builds[target], "Job", "hmarl-checkpoints-permissions")["spec"]["template"]["spec"]
        assert job["securityContext"]["fsGroup"] == 10001
        assert job["volumes"][-1]["persistentVolumeClaim"]["claimName"] == "hmarl-checkpoints"
    postgres = _find(builds["overlays/prod"], "StatefulSet", "postgres")["spec"]
    assert postgres["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in postgres["template"]["spec"]["containers"][0]["volumeMounts"]
    }


def test_services_select_pods_and_named_ports(overlay):
    target, docs = overlay
    for svc in (d for d in docs if d["kind"] == "Service"):
        pods = [
            tpl
            for _, tpl in all_pod_templates(docs)
            if _selects({"matchLabels": svc["spec"]["selector"]}, tpl["metadata"]["labels"])
        ]
        assert len(pods) == 1, f"{target}: {_name(svc)} selects {len(pods)} workloads"
        port_names = {p.get("name") for c in pods[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{_name(svc)}: targetPort {port['targetPort']}"
    assert _find(docs, "Service", "postgres")["spec"]["clusterIP"] == "None"  # headless, for the StatefulSet


# ---- MLflow ------------------------------------------------------------------------------------------
def test_mlflow_server_wiring(overlay):
    target, docs = overlay
    (c,) = _find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["args"])
    assert c["command"] == ["mlflow"] and c["args"][0] == "server"
    assert (
        "--backend-store-uri=postgresql://" in args
        and "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    )
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "hmarl-postgres", "key": "password"}
    assert "PASSWORD" not in args  # libpq reads PGPASSWORD; nothing secret in the arguments
    # authentication: MLflow's basic-auth app, its admin from a Secret, its config from a ConfigMap
    assert "--app-name=basic-auth" in c["args"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "hmarl-mlflow-admin"
    ini = _find(docs, "ConfigMap", "hmarl-mlflow-auth")["data"]["basic_auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in ini and "admin_password" not in ini
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "auth-config"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"{mount['mountPath']}/basic_auth.ini"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
    lock = (REPO / "requirements.lock").read_text()
    mlflow_version = re.search(r"^mlflow==(\S+)$", lock, re.M)[1]
    assert c["image"].startswith(f"ghcr.io/hmarl/mlflow:{mlflow_version}-"), c["image"]
    dockerfile = (REPO / "Dockerfile.mlflow").read_text()  # the image: upstream -full + the auth app's deps
    assert f"ghcr.io/mlflow/mlflow:v{mlflow_version}-full" in dockerfile and c["image"] in dockerfile
    for pin in ("Flask-WTF", "WTForms", "psycopg2-binary"):
        assert re.search(rf"^{pin}==(\S+)$", lock, re.M)[0] in dockerfile, pin


def test_mlflow_accepts_the_clients_host_header(builds):
    """MLflow >= 3.5 rejects unknown Host headers; the in-cluster URI clients use must pass its own check."""
    from mlflow.server.security_utils import is_allowed_host_header

    docs = builds["overlays/local"]
    (c,) = _find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    allowed = [
        h.strip()
        for h in next(e["value"] for e in c["env"] if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS").split(",")
    ]
    uri = _find(docs, "ConfigMap", "hmarl-pipeline-env")["data"]["MLFLOW_TRACKING_URI"]
    for host in (urlparse(uri).netloc, "localhost:5000", "mlflow:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "mlflow.attacker.example:5000")


# ---- scheduled retraining ----------------------------------------------------------------------------
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _cron_field_ok(text: str, lo: int, hi: int) -> bool:
    for item in text.split(","):
        m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
        if not m:
            return False
        start, end, step = m[2], m[3], m[4]
        values = [int(v) for v in (start, end) if v is not None]
        if any(not lo <= v <= hi for v in values) or (len(values) == 2 and values[0] > values[1]):
            return False
        if step is not None and int(step) == 0:
            return False
    return True


def test_cron_field_checker_rejects_bad_fields():
    assert _cron_field_ok("*/15", 0, 59) and _cron_field_ok("1-5", 0, 7) and _cron_field_ok("0,30", 0, 59)
    assert (
        not _cron_field_ok("60", 0, 59)
        and not _cron_field_ok("5-1", 0, 7)
        and not _cron_field_ok("*/0", 0, 59)
    )


def test_retraining_cronjob(overlay):
    target, docs = overlay
    cron = _find(docs, "CronJob", "hmarl-retrain")["spec"]
    fields = cron["schedule"].split()
    assert len(fields) == 5, cron["schedule"]
    assert all(_cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields, _CRON_RANGES, strict=True)), cron[
        "schedule"
    ]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert 0 < cron["successfulJobsHistoryLimit"] <= 5 and 0 < cron["failedJobsHistoryLimit"] <= 5
    assert cron["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    (c,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("ghcr.io/hmarl/hmarl:") and c["args"][:2] == ["pipeline", "submit"]
    assert c["args"][c["args"].index("--host") + 1] == "$(KFP_HOST)"
    assert cron.get("suspend", False) is (target == "overlays/local")


def _subcommands() -> set[str]:
    from hmarl.cli import build_parser

    return set(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_cronjob_arguments_pass_the_clis_own_checks(overlay):
    """The CronJob's command line, with the overlay's ConfigMap values filled in, is accepted by
    `hmarl pipeline submit` up to the network call (argument parsing and config resolution)."""
    if "pipeline" not in _subcommands():
        pytest.skip("`hmarl pipeline` is not in the CLI yet")
    from hmarl.cli import build_parser
    from hmarl.pipeline_cli import check_arguments, ir_defaults, run_arguments

    target, docs = overlay
    env = _find(docs, "ConfigMap", "hmarl-pipeline-env")["data"]
    (c,) = _find(docs, "CronJob", "hmarl-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ]
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["args"]]
    args = build_parser().parse_args(argv)
    assert (args.command, args.pipeline_command, args.func.__name__) == ("pipeline", "submit", "_cmd_submit")
    arguments = run_arguments(args)
    assert arguments["profile"] == env["HMARL_PROFILE"] and args.namespace == env["KFP_NAMESPACE"]
    if COMPILED_PIPELINE.exists():
        check_arguments(arguments, ir_defaults(COMPILED_PIPELINE))  # raises on an unknown profile or key


# ---- GPU pool and the PyTorchJob ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_pool(builds) -> dict[str, str]:
    pools = [_find(builds[t], "ConfigMap", "hmarl-gpu-pool")["data"] for t in OVERLAYS]
    assert all(p == pools[0] for p in pools), "one GPU pool definition for every overlay"
    assert set(pools[0]) == GPU_POOL_KEYS
    return pools[0]


@pytest.fixture(scope="module")
def pytorchjob(builds) -> dict:
    (job,) = builds["training"]
    return job


def test_pytorchjob_structure(pytorchjob):
    assert pytorchjob["apiVersion"] == "kubeflow.org/v1" and pytorchjob["kind"] == "PyTorchJob"
    spec = pytorchjob["spec"]
    # field names of the Training Operator v1 CRD (kubeflow.org_pytorchjobs.yaml)
    assert set(spec) <= {"pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"}
    assert set(spec["runPolicy"]) <= {
        "activeDeadlineSeconds", "backoffLimit", "cleanPodPolicy", "managedBy",
        "schedulingPolicy", "suspend", "ttlSecondsAfterFinished",
    }  # fmt: skip
    assert spec["runPolicy"].get("cleanPodPolicy", "None") in {"None", "Running", "All"}
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    for rs in replicas.values():
        assert set(rs) <= {"replicas", "restartPolicy", "template"}
        assert rs["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
    assert replicas["Master"]["template"] == replicas["Worker"]["template"], "one pod template for all nodes"

    pod = replicas["Master"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "pytorch"  # the operator injects MASTER_ADDR / PET_* into this container only
    assert c["command"] == ["torchrun"] and c["args"][:4] == ["-m", "hmarl.cli", "step", "train_symbols"]
    assert c["image"].startswith("ghcr.io/hmarl/hmarl-gpu:")
    assert {"name": "pytorchjob-port", "containerPort": 23456} in c["ports"]
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
    labels = replicas["Master"]["template"]["metadata"]["labels"]
    assert HMARL_POD_LABEL.items() <= labels.items() and labels["hmarl.io/training"] == "true"
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "hmarl-checkpoints"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == claim["name"]]
    assert c["workingDir"] == mount["mountPath"], "the step's relative paths land on the shared volume"


def test_pytorchjob_schedules_on_the_gpu_pool(pytorchjob, gpu_pool):
    spec = pytorchjob["spec"]
    pod = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (c,) = pod["containers"]
    gpus = gpu_pool["accelerator_limit"]
    assert c["resources"]["limits"][gpu_pool["accelerator_type"]] == gpus
    assert c["resources"]["requests"][gpu_pool["accelerator_type"]] == gpus
    assert spec["nprocPerNode"] == gpus, "one torchrun process per GPU"
    assert pod["nodeSelector"] == {gpu_pool["node_selector_key"]: gpu_pool["node_selector_value"]}
    assert {
        "key": gpu_pool["toleration_key"],
        "operator": gpu_pool["toleration_operator"],
        "effect": gpu_pool["toleration_effect"],
    } in pod["tolerations"]


def test_pytorchjob_runs_the_training_step_of_the_cli(pytorchjob):
    from hmarl.steps import STEP_NAMES

    if "train_symbols" not in STEP_NAMES:
        pytest.skip("step train_symbols is not in hmarl.steps yet")
    from hmarl.cli import build_parser

    (c,) = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    cli_args = [re.sub(r"\$\((\w+)\)", "http://mlflow:5000", a) for a in c["args"][2:]]
    args = build_parser().parse_args(cli_args)
    assert (args.command, args.name, args.params) == ("step", "train_symbols", "/app/params.yaml")


# ---- the compiled KFP pipeline against these manifests ------------------------------------------------
def test_compiled_pipeline_tasks_fit_the_manifests(builds):
    """Every Kubernetes setting the KFP IR gives its tasks refers to something these manifests provide."""
    spec, executors = _compiled_pipeline()
    readme = (MANIFESTS / "README.md").read_text()
    gpu_pool = _find(builds["overlays/prod"], "ConfigMap", "hmarl-gpu-pool")["data"]
    for target in OVERLAYS:
        docs = builds[target]
        secrets = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "Secret"}
        configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
        pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        mlflow = Endpoint(_pod_labels(docs, "Deployment", "mlflow"))
        for name, ex in executors.items():
            for ref in ex.get("secretAsEnv", []):
                keys = {k["secretKey"] for k in ref["keyToEnv"]}
                assert ref["secretName"] in readme and all(k in readme for k in keys), f"{name}: undocumented"
                if target == "overlays/local" and not ref.get("optional"):
                    assert keys <= set(secrets.get(ref["secretName"], {})), (
                        f"{target} {name}: {ref['secretName']}"
                    )
            for ref in ex.get("configMapAsEnv", []):
                keys = {k["configMapKey"] for k in ref["keyToEnv"]}
                assert keys <= set(configmaps.get(ref["configMapName"], {})), (
                    f"{target} {name}: {ref['configMapName']}"
                )
            for mount in ex.get("pvcMount", []):
                claim = mount.get("constant") or mount["pvcNameParameter"]["runtimeValue"]["constant"]
                assert claim in pvcs, f"{name}: PVC {claim}"
            labels = ex.get("podMetadata", {}).get("labels", {})
            assert can_connect(policies, Endpoint(labels), mlflow, 5000), (
                f"{target} {name}: blocked from MLflow"
            )
            if "securityContext" in ex:
                assert int(ex["securityContext"]["runAsUser"]) == APP_UID
            if "nodeSelector" in ex:
                assert ex["nodeSelector"]["labels"] == {
                    gpu_pool["node_selector_key"]: gpu_pool["node_selector_value"]
                }
            for tol in ex.get("tolerations", []):
                assert (tol["key"], tol.get("effect")) == (
                    gpu_pool["toleration_key"],
                    gpu_pool["toleration_effect"],
                )
    for ex in spec["deploymentSpec"]["executors"].values():
        image = ex["container"]["image"]
        assert image.rpartition(":")[0] in PROJECT_IMAGES, f"task image {image} is not a project image"


def test_gpu_pool_and_names_are_the_ones_pipelines_cluster_uses(gpu_pool, pytorchjob, monkeypatch):
    if not (REPO / "pipelines" / "cluster.py").exists():
        pytest.skip("pipelines/cluster.py not present")
    monkeypatch.syspath_prepend(str(REPO))
    from pipelines.cluster import CLUSTER

    pool = CLUSTER.gpu_pool
    assert {
        "accelerator_type": pool.accelerator,
        "accelerator_limit": str(pool.gpus_per_task),
        "node_selector_key": pool.node_selector_key,
        "node_selector_value": pool.node_selector_value,
        "toleration_key": pool.toleration_key,
        "toleration_operator": "Exists",
        "toleration_effect": pool.toleration_effect,
    } == gpu_pool
    (c,) = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert CLUSTER.checkpoint_pvc == "hmarl-checkpoints"
    assert CLUSTER.checkpoint_mount in {m["mountPath"] for m in c["volumeMounts"]}
    assert HMARL_POD_LABEL.items() <= CLUSTER.labels.items()
    assert (CLUSTER.run_as_user, CLUSTER.image.rpartition(":")[0], CLUSTER.gpu_image.rpartition(":")[0]) == (
        APP_UID,
        "ghcr.io/hmarl/hmarl",
        "ghcr.io/hmarl/hmarl-gpu",
    )


def test_pytorchjob_stages_the_inputs_of_its_step(pytorchjob):
    """The init container produces, on the shared volume, every input train_symbols reads (its default
    relative paths under the workingDir), by running the upstream steps whose outputs those are."""
    from hmarl.steps.runner import step_module

    pod = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    script = init["args"][0]
    staged = dict(
        p.split(":") for p in re.findall(r"\b(\w+:[\w/]+)\b", script.split("for pair in")[1].split(";")[0])
    )
    produced = {path for step, path in staged.items() for path in step_module(step).OUTPUTS.values()}
    assert set(staged.values()) <= produced  # each pair names its step's own output
    assert set(step_module("train_symbols").INPUTS.values()) <= set(staged.values())
    assert {m["mountPath"] for m in init["volumeMounts"]} >= {
        main["workingDir"]
    } and "cd /checkpoints" in script
    assert init["env"] == main["env"]  # the same tracking server, identity and object store
    assert pytorchjob["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["initContainers"] == [init]
