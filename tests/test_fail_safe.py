"""Recovering from faults: damaged checkpoints, two runs of one run key, leftovers of killed writes, safe
loading of crafted files, scientific notation in params, ``hmarl evaluate`` outside a project, ignored
outputs."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hmarl.config import ConfigError, build_config
from hmarl.errors import DataError
from hmarl.io import read_json, write_json
from hmarl.learners.checkpoint import CheckpointStore, RunLockedError, _file_digest, run_lock
from hmarl.learners.symbol_trainer import TIMING_KEYS
from hmarl.safe_load import inside, read_weights

sys.path.insert(0, str(Path(__file__).parent))
from refusal_cases import Crafted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path, updates=(2, 4, 6)) -> CheckpointStore:
    store = CheckpointStore(root, keep=3)
    for u in updates:
        store.save(u, {"update": u, "w": torch.full((64,), float(u))})
    return store


# --------------------------------------------------------------------------- checkpoints
def test_resume_skips_damaged_checkpoints_and_says_why(tmp_path):
    store = _store(tmp_path)
    assert store.load_latest()["update"] == 6 and store.skipped == []
    newest = tmp_path / "update_0000006" / "rank0.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated: disk full, node lost
    (tmp_path / "update_0000004" / "manifest.json").unlink()  # never sealed: killed before its manifest
    payload = store.load_latest()
    assert payload["update"] == 2 and torch.equal(payload["w"], torch.full((64,), 2.0))
    assert store.skipped == [
        "update_0000006: rank0.pt does not match its checksum (truncated or altered)",
        "update_0000004: no manifest (the write did not complete)",
    ]
    # the next save supersedes the skipped ones: only sealed checkpoints up to it remain
    store.save(3, {"update": 3})
    assert sorted(p.name for p in tmp_path.glob("update_*")) == ["update_0000002", "update_0000003"]
    assert store.load_latest()["update"] == 3 and store.skipped == []


def test_a_crafted_file_resealed_with_its_checksum_is_skipped_unread(tmp_path):
    store = _store(tmp_path, (1, 2))
    folder, marker = tmp_path / "update_0000002", tmp_path / "ran"
    torch.save({"update": 2, "x": Crafted(marker)}, folder / "rank0.pt")
    manifest = read_json(folder / "manifest.json")  # resealed: the checksum matches the crafted file
    manifest["files"]["rank0.pt"] = _file_digest(folder / "rank0.pt")
    write_json(folder / "manifest.json", manifest)
    assert store.load_latest()["update"] == 1
    assert store.skipped == ["update_0000002: rank0.pt does not load (UnpicklingError)"]
    assert not marker.exists()


def test_nothing_verifies_means_a_fresh_start(tmp_path):
    store = _store(tmp_path, (1,))
    (tmp_path / "update_0000001" / "manifest.json").write_text("{")
    assert store.load_latest() is None
    assert store.skipped[0].startswith("update_0000001: unreadable manifest")


# --------------------------------------------------------------------------- one writer per run key
def test_a_second_run_of_a_run_key_waits_bounded_then_stops_with_a_named_error(tmp_path):
    folder = tmp_path / "key"
    with run_lock(folder, 0, "ppo.lock_wait_s"):
        t0 = time.monotonic()
        second = run_lock(folder, 0.5, "ppo.lock_wait_s")
        with pytest.raises(RunLockedError, match=rf"another run of this run key .*pid {os.getpid()}"), second:
            pass
        assert 0.5 <= time.monotonic() - t0 < 5
    with run_lock(folder, 0, "ppo.lock_wait_s"):  # released: the next run takes it
        pass


def test_a_killed_holder_never_leaves_the_lock_stale(tmp_path):
    folder = tmp_path / "key"
    code = (
        "import sys, time; from hmarl.learners.checkpoint import run_lock\n"
        f"with run_lock({str(folder)!r}, 0, 'x'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(RunLockedError, match=f"pid {holder.pid}"), run_lock(folder, 0, "x"):
                pass
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
    with run_lock(folder, 1, "x"):  # the kernel dropped the dead holder's lock
        pass


# --------------------------------------------------------------------------- safe loading
def test_a_crafted_pickle_is_refused_unread(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "agent.pt"
    torch.save({"x": Crafted(marker)}, path)
    pickle.loads(pickle.dumps(Crafted(marker)))  # the payload is real: unpickled, it runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match=r"agent.pt: refused: it holds objects other than tensors") as info:
        read_weights(path)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()


def test_manifest_paths_must_stay_inside_their_folder(tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "fold_0.pt").write_bytes(b"x")
    assert inside(tmp_path / "enc", "fold_0.pt", "m.json") == (tmp_path / "enc" / "fold_0.pt").resolve()
    (tmp_path / "enc" / "link.pt").symlink_to("/etc/passwd")
    for bad in ("../../../../etc/passwd", "/etc/passwd", "link.pt", "", None, 3):
        with pytest.raises(DataError, match="m.json: "):
            inside(tmp_path / "enc", bad, "m.json")


# --------------------------------------------------------------------------- params
def test_scientific_notation_is_a_number_where_it_is_whole():
    cfg = build_config({}, ["ppo.total_steps=1e9", "master.total_steps=2.5E3", "ppo.lr=3e-4"])
    assert cfg.ppo.total_steps == 1_000_000_000 and isinstance(cfg.ppo.total_steps, int)
    assert cfg.master.total_steps == 2500 and cfg.ppo.lr == pytest.approx(3e-4)
    assert build_config(yaml.safe_load("ppo: {total_steps: 1e6}")).ppo.total_steps == 1_000_000
    with pytest.raises(ConfigError, match=r"ppo.total_steps: .*integer"):
        build_config({}, ["ppo.total_steps=1.5e0"])
    assert build_config({}, ["data.benchmark_symbol=1e9"]).data.benchmark_symbol == "1e9"  # text stays text


# --------------------------------------------------------------------------- leftovers and outputs
def test_a_killed_ingest_leaves_temp_folders_the_next_ingest_removes(tmp_path):
    from hmarl.steps.runner import execute

    out = tmp_path / "data" / "canonical"
    out.parent.mkdir()
    killed = [tmp_path / "data" / ".canonical.tmp-k1", tmp_path / "data" / "..canonical.tmp-k1.tmp-k2"]
    for folder in killed:
        folder.mkdir()
        (folder / "bars.parquet").write_bytes(b"0" * 4096)
    cfg = build_config({}, ["synthetic.num_symbols=3", "synthetic.num_bars=120", "tracking.enabled=false"])
    execute("ingest", cfg, {}, {"canonical": str(out)})
    assert sorted(p.name for p in out.parent.iterdir()) == ["canonical"]


def test_every_pipeline_output_is_ignored_by_git():
    import re

    outs = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            outs.add(re.sub(r"\$\{item\}", "0", path))
    outs |= {"checkpoints/train_symbols/x/lock", "mlruns.db", "data/.canonical.tmp-abc", "reports/.x.old-1"}
    inner = {f"{o}/file": o for o in outs}  # a folder's pattern (``/data/canonical/``) matches what is in it
    args = ["git", "check-ignore", "--no-index", *sorted(outs), *sorted(inner)]
    ignored = set(subprocess.run(args, cwd=REPO, capture_output=True, text=True).stdout.split())
    assert {o for o in outs if o not in ignored and f"{o}/file" not in ignored} == set()


# --------------------------------------------------------------------------- a step resuming past damage
def test_train_symbols_resumes_from_the_newest_checkpoint_that_verifies(tmp_path_factory, tmp_path):
    from bundle_fixtures import model_config, model_inputs, trained_pipeline
    from hmarl.steps.runner import execute

    root = trained_pipeline(tmp_path_factory)
    inputs = {k: model_inputs(root)[k] for k in ("store", "sl_cache", "encoder")}
    cfg = model_config(
        root, f"ppo.checkpoint_dir={tmp_path / 'ck'}", "ppo.checkpoint_every=1", "ppo.total_steps=48"
    )
    out = tmp_path / "symbols"
    execute("train_symbols", cfg, inputs, {"model": str(out)})
    first = torch.load(out / "agent.pt", weights_only=True)["state_dict"]
    series = [
        {k: v for k, v in r.items() if k not in TIMING_KEYS}
        for r in read_json(out / "telemetry.json")["series"]
    ]
    (run_dir,) = (tmp_path / "ck").iterdir()
    newest = run_dir / "update_0000003" / "rank0.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # the node died mid-write

    execute("train_symbols", cfg, inputs, {"model": str(out)})  # the rerun replaces the previous output
    manifest = read_json(out / "manifest.json")
    assert manifest["resumed_from_update"] == 2
    assert manifest["resume_skipped"] == [
        "update_0000003: rank0.pt does not match its checksum (truncated or altered)"
    ]
    again = torch.load(out / "agent.pt", weights_only=True)["state_dict"]
    assert first.keys() == again.keys() and all(
        torch.equal(first[k], again[k]) for k in first
    )  # exact resume
    rows = read_json(out / "telemetry.json")["series"]
    assert [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows] == series
