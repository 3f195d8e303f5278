"""What hmarl refuses: one case per row of the README's "What it refuses" table.

Each case breaks one input of a working setup (a trained bundle, its bars, an account, a state file, a
bar file) and names the command it gives it to and a piece of the error it must print. The table in the
README is rendered from these cases (``python tests/refusal_cases.py`` prints it) and
tests/test_refusals.py runs every case and checks the README holds exactly this table.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

MARKERS = ("<!-- refusals:start -->", "<!-- refusals:end -->")


@dataclass
class Setup:
    """A working setup for one case: ``bundle`` (a copy the case may break), the bars ``data``, a scratch
    folder ``work``, the pipeline ``root`` and its ``params`` file; ``stack`` holds what a case keeps
    open while the command runs (a lock)."""

    bundle: Path
    data: Path
    work: Path
    root: Path
    params: Path
    stack: ExitStack
    symbols: list[str]
    bars: Path  # a valid long bar file (CSV)


@dataclass(frozen=True)
class Refusal:
    input: str  # what the user gives
    fault: str  # what is wrong with it
    error: str  # a piece of the message (after "hmarl: error: ")
    argv: Callable[[Setup], list[str]]  # breaks the input; returns the command's arguments


class Crafted:
    """A pickle that would run a command when unpickled (torch.load(weights_only=True) must refuse it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def act(s: Setup, *extra: str) -> list[str]:
    return ["act", "--params", str(s.params), "--model", str(s.bundle), "--data", str(s.data), *extra]


def out(s: Setup) -> list[str]:
    return ["--out", str(s.work / "orders.json")]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _missing(s: Setup) -> list[str]:
    (s.bundle / "master" / "master.pt").unlink()
    return act(s, *out(s))


def _truncated(s: Setup) -> list[str]:
    _truncate(s.bundle / "symbols" / "agent.pt")
    return act(s, *out(s))


def _empty(s: Setup) -> list[str]:
    (s.bundle / "symbols" / "agent.pt").write_bytes(b"")
    return act(s, *out(s))


def _crafted(s: Setup) -> list[str]:
    torch.save({"version": "master-agent-1", "x": Crafted(s.work / "ran")}, s.bundle / "master" / "master.pt")
    return act(s, *out(s))


def _npz(s: Setup) -> list[str]:
    _truncate(s.bundle / "features" / "norm.npz")
    return act(s, *out(s))


def _escape(s: Setup) -> list[str]:
    def outside(doc: dict) -> None:
        doc["fits"] = [{**fit, "checkpoint": "../../../../../../etc/passwd"} for fit in doc["fits"]]

    _edit(s.bundle / "encoder" / "manifest.json", outside)
    return act(s, *out(s))


def _manifest(s: Setup) -> list[str]:
    (s.bundle / "sl_cache" / "manifest.json").write_text('{"channels": [')
    return act(s, *out(s))


def _meta(s: Setup) -> list[str]:
    _edit(s.bundle / "features" / "meta.json", lambda doc: doc.update(symbols="AAA"))
    return act(s, *out(s))


def _cash(s: Setup) -> list[str]:
    return act(s, *out(s), "--positions", str(_json(s.work / "p.json", {"cash": 1e308, "positions": []})))


def _shares(s: Setup) -> list[str]:
    row = {"symbol": s.symbols[0], "shares": 1e308, "entry_price": 10.0}
    doc = {"cash": 1000.0, "positions": [row]}
    return act(s, *out(s), "--positions", str(_json(s.work / "p.json", doc)))


def _state(s: Setup, stamp: str, before) -> list[str]:
    doc = {"model": str(s.bundle), "timestamp": stamp, "directive": 0, "before": before}
    return act(s, *out(s), "--state", str(_json(s.work / "state.json", doc)))


def _elapsed(s: Setup) -> list[str]:
    return _state(s, "2000-01-03T00:00:00+00:00", {"directive": 0, "elapsed": -3})


def _future(s: Setup) -> list[str]:
    return _state(s, "2200-01-01T00:00:00+00:00", None)


def _locked(s: Setup) -> list[str]:
    from bundle_fixtures import model_config, model_inputs
    from hmarl.agents.data import load_training_data
    from hmarl.learners.checkpoint import run_lock
    from hmarl.learners.stage_config import symbol_stage_config
    from hmarl.learners.symbol_stage import run_key

    cfg = symbol_stage_config(model_config(s.root, f"ppo.checkpoint_dir={s.work / 'ck'}"))
    inputs = {k: Path(v) for k, v in model_inputs(s.root).items()}
    folder = s.work / "ck" / run_key(cfg, load_training_data(cfg, inputs))
    s.stack.enter_context(run_lock(folder, 0, "test"))  # the first run, still training
    args = [f"--input={k}={inputs[k]}" for k in ("store", "sl_cache", "encoder")]
    sets = ["--set", f"ppo.checkpoint_dir={s.work / 'ck'}"]
    step = ["step", "train_symbols", "--params", str(s.params), *sets, *args, "--metrics", "-"]
    return [*step, "--output", f"model={s.work / 'symbols'}"]


def _bars(s: Setup, change: Callable[[str], str]) -> list[str]:
    lines = s.bars.read_text().splitlines()
    path = s.work / "bars.csv"
    path.write_text(change("\n".join(lines)) + "\n")
    sets = ["--set", "data.source=path", "--set", f"data.path={path}"]
    return [
        "step",
        "ingest",
        "--params",
        str(s.params),
        *sets,
        "--output",
        f"canonical={s.work / 'canonical'}",
    ]


def _no_close(s: Setup) -> list[str]:
    return _bars(s, lambda text: text.replace(",close,", ",last,", 1))


def _duplicate(s: Setup) -> list[str]:
    return _bars(s, lambda text: text + "\n" + text.splitlines()[1])


CASES = [
    Refusal("bundle (`--model`)", "a file missing", "master/master.pt: missing", _missing),
    Refusal("bundle", "a truncated `.pt`", "agent.pt: damaged or not a torch checkpoint", _truncated),
    Refusal("bundle", "an empty `.pt`", "agent.pt: empty file", _empty),
    Refusal("bundle", "a crafted pickle in a `.pt`", "master.pt: refused: it holds objects", _crafted),
    Refusal("bundle", "a truncated `.npz`", "norm.npz: damaged or not an .npz archive", _npz),
    Refusal("bundle", "a manifest naming `../../etc/passwd`", "leads outside", _escape),
    Refusal("bundle", "a manifest that is not JSON", "sl_cache/manifest.json: not valid JSON", _manifest),
    Refusal(
        "bundle",
        "`meta.json` of the wrong shape",
        "meta.json: key 'symbols' must be a list, found a string",
        _meta,
    ),
    Refusal("`--positions`", "cash of 1e308", "beyond desk.max_cash", _cash),
    Refusal("`--positions`", "1e308 shares", "beyond desk.max_shares", _shares),
    Refusal("`--state`", "negative elapsed bars", "bars elapsed cannot be negative", _elapsed),
    Refusal("`--state`", "a timestamp after the newest bar", "is after the newest bar of the data", _future),
    Refusal(
        "a second `train_symbols`",
        "same run key, first still running",
        "another run of this run key",
        _locked,
    ),
    Refusal("bar file (`data.path`)", "no `close` column", "missing required column(s) ['close']", _no_close),
    Refusal("bar file", "a bar listed twice", "duplicate", _duplicate),
]


def table() -> str:
    rows = ["| input | fault | error (`hmarl: error: ...`, exit 2) |", "| --- | --- | --- |"]
    rows += [f"| {c.input} | {c.fault} | `{c.error}` |" for c in CASES]
    return "\n".join(rows)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


if __name__ == "__main__":
    print(table())
