# syntax=docker/dockerfile:1
# hmarl CPU image: the project package in a venv installed from the committed lock file.
# Used by the KFP components (install_kfp_package=False: nothing is installed at run time), the
# scheduled-retraining CronJob and `docker run hmarl step <name>`.
#
#   TAG=$(make -s image-tag)      # <version>-<commit>: what `hmarl pipeline compile` puts into the IR
#   docker build --build-arg IMAGE_TAG=$TAG -t ghcr.io/hmarl/hmarl:$TAG .
#
# The native kernels (simulator step, int8 heads, transformer completion; hmarl/cbuild.py) are compiled in
# the builder stage for x86-64-v3 (AVX2/FMA: x86 CPUs since ~2015; TARGET_MARCH to change) into the package
# and shipped in the venv; the runtime stage has no compiler and loads them where the CPU has the features
# (elsewhere every caller runs its torch path). The README's figures are for -march=native builds
# (README, "Which numbers hold where").
#
# GPU training uses Dockerfile.gpu (same layout, CUDA build of torch).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: venv + `pip install -c requirements.lock ".[cloud]"` ----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# torch==2.13.0 is pinned by the lock; the CPU wheel index serves 2.13.0+cpu, which pip prefers over
# PyPI's CUDA build of the same version (a local version sorts higher) and which satisfies the pin.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the install needs, so code-only edits to the app files below reuse this layer.
COPY requirements.lock pyproject.toml README.md ./
COPY src/ ./src/
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" pip install -c requirements.lock ".[cloud]"
# fails the build when a kernel does not compile (the compiler's message in the log)
ARG TARGET_MARCH=x86-64-v3
RUN python -m hmarl.cbuild --prebuild --require --march "${TARGET_MARCH}"

# ---- runtime: the venv and the app files, no compilers, no pip cache, non-root --------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
# <version>-<commit> (make image-tag): `hmarl pipeline compile` inside the image (the retraining CronJob)
# tags the pipeline's images with it; there is no git checkout in the image to derive it from
ARG IMAGE_TAG=0.1.0-unversioned
ARG SOURCE_URL=https://github.com/hmarl/hmarl
ARG LICENSE=NOASSERTION
LABEL org.opencontainers.image.title="hmarl" \
      org.opencontainers.image.description="Hierarchical multi-agent RL trading pipeline (CPU): DVC and Kubeflow Pipelines steps" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${IMAGE_TAG}" \
      org.opencontainers.image.licenses="${LICENSE}"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    HMARL_IMAGE_TAG=${IMAGE_TAG}

# libgomp: the OpenMP runtime the inference kernels link (torch's own copy serves once torch is loaded)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A passwd entry for the fixed UID: getpass.getuser() (torch compile caches, MLflow user tag) needs one.
RUN groupadd --gid 10001 hmarl \
    && useradd --uid 10001 --gid 10001 --home-dir /home/hmarl --create-home --shell /usr/sbin/nologin hmarl

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Root-owned and read-only for the runtime user; steps write their outputs to mounted volumes.
COPY params.yaml dvc.yaml ./
# The KFP DAG and component wrappers, when the checkout has them (a glob matching nothing copies nothing).
COPY pipeline[s] ./pipelines/
COPY component[s] ./components/

USER 10001:10001

# No HEALTHCHECK: the image runs batch steps (KFP tasks, Jobs) whose exit code is their health.
ENTRYPOINT ["hmarl"]
CMD ["--help"]
