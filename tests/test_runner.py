"""The step runner is all-or-nothing: outputs appear only when a step succeeds."""

from __future__ import annotations

import json
import types

import pytest

from hmarl.config import HmarlConfig
from hmarl.errors import StepError
from hmarl.io import atomic_path, write_json
from hmarl.steps import runner


def _fake_step(tmp_path, fail: bool):
    def run(cfg, inputs, outputs):
        outputs["table"].mkdir()
        (outputs["table"] / "part.txt").write_text("half")
        if fail:
            raise RuntimeError("boom after a partial write")
        outputs["flag"].write_text("ok")
        return {"rows": 3.0}

    return types.SimpleNamespace(
        INPUTS={"src": str(tmp_path / "src.txt")},
        OUTPUTS={"table": str(tmp_path / "out" / "table"), "flag": str(tmp_path / "out" / "flag.txt")},
        run=run,
    )


@pytest.fixture
def step(tmp_path, monkeypatch):
    (tmp_path / "src.txt").write_text("input")

    def install(fail: bool):
        monkeypatch.setattr(runner, "step_module", lambda name: _fake_step(tmp_path, fail))

    return install


def test_success_renames_outputs_and_writes_metrics(tmp_path, step):
    step(fail=False)
    metrics = runner.execute("x", HmarlConfig(), metrics_path=tmp_path / "m" / "x.json")
    assert metrics == {"rows": 3.0}
    assert (tmp_path / "out" / "table" / "part.txt").read_text() == "half"
    assert json.loads((tmp_path / "m" / "x.json").read_text()) == {"rows": 3.0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["flag.txt", "table"]  # no temp left


def test_failure_writes_nothing_and_keeps_the_previous_complete_outputs(tmp_path, step):
    step(fail=False)
    runner.execute("x", HmarlConfig(), metrics_path=tmp_path / "x.json")
    (tmp_path / "out" / "flag.txt").write_text("previous")
    step(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        runner.execute("x", HmarlConfig(), metrics_path=tmp_path / "x.json")
    # the previous run's outputs stay whole (no half-written table, no temp folders beside them)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["flag.txt", "table"]
    assert (tmp_path / "out" / "flag.txt").read_text() == "previous"
    assert json.loads((tmp_path / "x.json").read_text()) == {"rows": 3.0}


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run(tmp_path, step):
    out = tmp_path / "out"
    out.mkdir()
    killed = [out / ".table.tmp-abc123", out / "..table.tmp-abc123.tmp-def", out / ".flag.txt.old-x1"]
    for path in killed:
        path.mkdir()
        (path / "big.bin").write_bytes(b"0" * 1000)
    (out / ".other.tmp-keep").mkdir()  # not a temp of this step's outputs: left alone
    step(fail=False)
    runner.execute("x", HmarlConfig())
    assert sorted(p.name for p in out.iterdir()) == [".other.tmp-keep", "flag.txt", "table"]


def test_missing_input_and_unknown_names(tmp_path, step):
    step(fail=False)
    with pytest.raises(StepError, match="input 'src' not found"):
        runner.execute("x", HmarlConfig(), inputs={"src": str(tmp_path / "absent")})
    with pytest.raises(StepError, match=r"unknown outputs \['tabel'\]"):
        runner.execute("x", HmarlConfig(), outputs={"tabel": "t"})


def test_unknown_step_name():
    with pytest.raises(StepError, match="unknown step 'train_everything'"):
        runner.step_module("train_everything")


def test_atomic_path_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "f.json"
    write_json(target, {"v": 1})
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise ValueError("interrupted")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
