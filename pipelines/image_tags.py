"""The manifests' image tags, written with the IR's: one ``<version>-<commit>`` tag for everything a
release deploys, so the CronJob, the Jobs and the PyTorchJob never run a mutable ``:0.1.0`` image that a
rebuild silently replaced (and KFP's cache, keyed on the image string, never serves another build's outputs).

The manifests name the images without a tag; the ``images:`` list of each kustomization that `kubectl
apply -k` reads sets it (``KUSTOMIZATIONS``). ``hmarl pipeline compile`` rewrites those lists with the tag it
compiled into ``pipelines/hmarl_pipeline.yaml``; tests/test_manifests.py checks the two agree. A release
compiles with ``HMARL_IMAGE_TAG`` set to the tag of the images it pushed (see manifests/README.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipelines.cluster import CLUSTER

# kustomizations whose builds are applied (the overlays include base); the project images they carry
KUSTOMIZATIONS = ("manifests/base/kustomization.yaml", "manifests/training/kustomization.yaml")
HEADER = "# Image tags: written by `hmarl pipeline compile` (the IR's tag); do not edit by hand."


def project_images(cluster=CLUSTER) -> dict[str, str]:
    """Image name -> tag of the project's images (CPU and GPU) in the compiled cluster profile."""
    out: dict[str, str] = {}
    for ref in (cluster.image, cluster.gpu_image):
        name, _, tag = ref.rpartition(":")
        out[name] = tag
    return out


def images_block(images: dict[str, str]) -> str:
    lines = [HEADER, "images:"]
    for name, tag in sorted(images.items()):
        lines += [f"  - name: {name}", f"    newTag: {tag}"]
    return "\n".join(lines) + "\n"


def with_images(text: str, images: dict[str, str]) -> str:
    """``text`` (a kustomization) with its generated ``images:`` block replaced (or appended)."""
    block = images_block(images)
    pattern = re.compile(rf"^{re.escape(HEADER)}\nimages:\n(?:  .*\n)*", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    if re.search(r"^images:", text, re.MULTILINE):
        raise ValueError("a hand-written images: list; remove it (the tags are generated)")
    return text.rstrip("\n") + "\n\n" + block


def write_manifest_tags(root: Path, cluster=CLUSTER) -> list[Path]:
    """Rewrite the ``images:`` list of every kustomization in ``KUSTOMIZATIONS`` under ``root``."""
    from hmarl.io import write_text

    written = []
    for rel in KUSTOMIZATIONS:
        path = root / rel
        text = path.read_text()
        new = with_images(text, project_images(cluster))
        yaml.safe_load(new)  # still one valid YAML document
        if new != text:
            write_text(path, new)
        written.append(path)
    return written
