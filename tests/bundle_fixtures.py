"""A tiny trained pipeline (ingest .. train_master through the real steps) and its walk-forward fold, built
once per test session and shared by the promotion and ``hmarl evaluate`` tests."""

from __future__ import annotations

import sys
from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.evaluation.gate import evaluate_gate, write_gate_json
from hmarl.steps.runner import execute

sys.path.insert(0, str(Path(__file__).parent))
from symbol_fixtures import AGENT, TINY, build_upstream, market_config  # noqa: E402

MASTER = ["master.hidden=[32,16]", "master.num_envs=4", "master.num_steps=16", "master.total_steps=32"]
_BUILT: dict[str, Path] = {}


def model_config(root: Path, *overrides: str) -> HmarlConfig:
    """The params the pipeline in ``root`` was trained with (``overrides`` on top)."""
    return market_config(
        TINY,
        "regime",
        *AGENT,
        *MASTER,
        "ppo.total_steps=32",
        f"ppo.checkpoint_dir={root / 'ck'}",
        f"master.checkpoint_dir={root / 'mck'}",
        "walk_forward.folds=[0]",
        "walk_forward.cost_bps=[0]",  # cost stress at 0 bps and the base cost: fewer backtests
        *overrides,
    )


def model_inputs(root: Path) -> dict[str, str]:
    names = ("store", "sl_cache", "encoder", "symbols", "master")
    folders = ("features", "sl_cache", "encoder", "symbols", "master")
    return {n: str(root / f) for n, f in zip(names, folders, strict=True)}


def trained_pipeline(tmp_path_factory) -> Path:
    """Root holding canonical/, features/, sl_cache/, encoder/, symbols/, master/ and walk_forward/fold_0."""
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("pipeline")
        up = build_upstream(root, market_config(TINY, "regime"))
        cfg = model_config(root)
        execute("train_symbols", cfg, up, {"model": str(root / "symbols")})
        execute(
            "train_master", cfg, {**up, "symbols": str(root / "symbols")}, {"model": str(root / "master")}
        )
        walk_forward(root, cfg, root / "walk_forward")
        _BUILT["root"] = root
    return _BUILT["root"]


def walk_forward(root: Path, cfg: HmarlConfig, out: Path) -> Path:
    """The walk_forward step on the pipeline's only fold (its models are that fold's: nothing retrains)."""
    execute("walk_forward", cfg, model_inputs(root), {"evaluation": str(out / "fold_0")})
    return out


def gate_folder(folder: Path, cfg: HmarlConfig, go: bool) -> Path:
    """A gate output holding a go (every criterion passes) or no-go (the learning criterion fails) verdict."""
    values = {n: c.threshold + (1 if c.op in (">", ">=") else -1) for n, c in cfg.gate.criteria.items()}
    if not go:
        values["symbol_walk_forward_sharpe"] = float("nan")
    write_gate_json(folder / "gate.json", evaluate_gate(values, cfg.gate))
    return folder
