"""dvc.yaml is generated from the step contracts, and its code deps cover what each step really imports."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hmarl.config import HmarlConfig
from hmarl.steps import STEP_NAMES
from hmarl.steps.runner import step_module
from hmarl.wiring.closure import file_closure, module_closure
from hmarl.wiring.dvc import render, stage

REPO = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_the_generated_one():
    assert (REPO / "dvc.yaml").read_text() == render(), "dvc.yaml drifted: run `hmarl pipeline sync`"


@pytest.mark.parametrize("step", ["validate", "sl_cache", "train_symbols", "promote"])
def test_code_deps_cover_every_module_the_step_loads(step):
    """A fresh interpreter that imports the step and the CLI loads only modules the stage depends on."""
    code = (
        f"import json, sys, hmarl.cli, hmarl.steps.{step}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'hmarl' or m.startswith('hmarl.'))))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    deps = set(stage(step).get("do", stage(step))["deps"])
    missing = [m for m in loaded if not _covered(m, deps)]
    assert not missing, f"{step}: modules loaded but not in its dvc deps: {missing}"


def _covered(module: str, deps: set[str]) -> bool:
    parts = module.split(".")
    base = "src/" + "/".join(parts)
    return f"{base}.py" in deps or f"{base}/__init__.py" in deps


def test_closure_follows_function_level_imports_and_c_sources():
    closure = module_closure("hmarl.steps.sl_cache")
    # the hand-written list missed these (issue 18): the store, the window gather and the schema defaults
    assert {"hmarl.data.store", "hmarl.data.windows", "hmarl.config"} <= closure
    files = {p.name for p in file_closure("hmarl.env.native")}
    assert "native_step.c" in files  # a C source the module compiles at run time is a dependency


def test_every_declared_params_section_exists():
    sections = set(HmarlConfig.model_fields)
    for name in STEP_NAMES:
        unknown = set(step_module(name).PARAMS) - sections
        assert not unknown, f"{name}.PARAMS names unknown sections {unknown}"


def test_fan_out_stages_iterate_over_the_config_lists():
    stages = yaml.safe_load(render())["stages"]
    assert stages["stage5"]["foreach"] == "${stage5.seeds}"
    assert stages["walk_forward"]["foreach"] == "${walk_forward.folds}"
    assert "reports/walk_forward/fold_${item}" in stages["walk_forward"]["do"]["outs"]


def test_params_cover_the_sections_a_step_reads_itself():
    """Every ``cfg.<section>`` a step module reads is in its PARAMS (tracking and the profile name only
    say where runs are logged / which overlay: the overlay itself is a dependency of every stage)."""
    exempt = {"tracking", "profile", "model_copy"}
    for name in STEP_NAMES:
        mod = step_module(name)
        read = set(re.findall(r"\bcfg\.([a-z_0-9]+)", Path(mod.__file__).read_text())) - exempt
        missing = read - set(mod.PARAMS)
        assert not missing, f"{name} reads cfg.{sorted(missing)} but PARAMS lacks them"


# --------------------------------------------------------------------------- import rules (issue 18)
SRC = REPO / "src" / "hmarl"
STEP_INFRA = ("runner", "__init__")  # the runner loads every step by name; the package lists them
STEP_MODULES = {f"hmarl.steps.{p.stem}" for p in (SRC / "steps").glob("*.py") if p.stem not in STEP_INFRA}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module an ``import`` / ``from ... import`` anywhere in ``tree`` names (``from pkg import x``
    counts ``pkg.x`` too: ``x`` may be a module); relative imports resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _step_modules_imported(path: Path) -> set[str]:
    module = _module_name(path)
    names = _imported(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
    return {n for n in names if n in STEP_MODULES and n != module}


def test_the_import_rules_see_every_form_of_import():
    tree = ast.parse(
        "from hmarl.steps import STEP_NAMES, gate\nimport hmarl.steps.ingest\n"
        "def f():\n    from .train_master import x\n    from . import stage5\n"
    )
    assert _imported(tree, "hmarl.steps.promote", False) >= {
        "hmarl.steps.gate",
        "hmarl.steps.ingest",
        "hmarl.steps.train_master",
        "hmarl.steps.stage5",
    }


def test_no_step_imports_a_step_and_nothing_else_imports_one():
    """Steps are thin front ends over library code: a procedure two steps need lives in the library."""
    steps_dir = SRC / "steps"
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        imported = _step_modules_imported(path)
        if path.parent == steps_dir and path.stem in STEP_INFRA:
            continue
        if imported:
            where = "step" if path.parent == steps_dir else "library module"
            bad.append(f"{path.relative_to(REPO)} ({where}) imports {sorted(imported)}")
    assert not bad, "\n".join(bad)


# The README's architecture picture, lowest layer first; a package may import its own layer and those
# below. Shared modules (config and the typed params, io, errors, tracking, the C build, runtime) may be used by all.
LAYERS = (
    {"data"},
    {"env"},
    {"sl"},
    {"encoders"},
    {"agents"},
    {"learners", "evaluation"},
    {"serve"},
    {"steps"},
    {"cli", "pipeline_cli", "pipeline_local", "kfp_glue", "wiring"},
)
SHARED = {"config", "params_base", "io", "errors", "safe_load", "tracking", "cbuild", "runtime", "__init__"}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "hmarl" else None


def test_imports_run_down_the_layers_of_the_readme():
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    known = set(rank) | SHARED
    bad, seen = [], set()
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        src = _top(module) or "__init__"
        seen.add(src)
        assert src in known, f"{path.relative_to(REPO)}: package {src!r} is in no layer of LAYERS"
        if src in SHARED:
            continue
        for name in _imported(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py"):
            dst = _top(name)
            if dst in rank and rank[dst] > rank[src]:
                bad.append(f"{path.relative_to(REPO)} ({src}) imports {name} (layer {dst})")
    assert not bad, "\n".join(sorted(set(bad)))
    assert set(rank) <= seen, f"LAYERS names packages that no longer exist: {set(rank) - seen}"


def test_committed_kfp_components_are_the_generated_ones():
    """components/<step>.py come from the step contracts (hmarl pipeline sync), like dvc.yaml: every step
    but the hand-written gate has one, and its artifacts are exactly the step's INPUTS / OUTPUTS."""
    from hmarl.steps import STEP_NAMES
    from hmarl.steps.runner import step_module
    from hmarl.wiring import kfp

    generated = kfp.generated()
    assert {Path(rel).stem for rel in generated} == set(STEP_NAMES) - set(kfp.HAND_WRITTEN)
    stale = kfp.sync(REPO, check=True)
    assert not stale, f"{stale} differ from the step contracts: run `hmarl pipeline sync`"
    for rel, text in generated.items():
        mod = step_module(Path(rel).stem)
        for key in mod.INPUTS:
            assert f"    {key}: Input[" in text, (rel, key)
        for key in mod.OUTPUTS:
            assert f"    {key}: Output[" in text, (rel, key)
