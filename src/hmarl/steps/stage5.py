"""Stage 5 cross-seed validation, one seed per call: a short independent retrain of the symbol agents
(``cfg.seed``, ``stage5.total_steps`` env steps) and the seed's anti-collapse checklist from its telemetry.

DVC runs it once per ``stage5.seeds`` entry (``--set seed=<s> --output run=reports/stage5/seed_<s>``);
the gate step reads every ``seed_*/values.json`` and takes the worst seed per criterion.

Training is exactly the ``train_symbols`` step's (:func:`hmarl.learners.symbol_stage.train_symbol_stage`,
the same inputs), so it faces the same training directive: ``ppo.directive`` (aggressive by default, via ``symbol_stage_config``). The
checklist's ``max_executed_action_share`` and trade rates are therefore measured under that directive,
the one the symbol agents are trained with. Each seed is its own MLflow run (params hold ``seed``; tags
``stage5_seed`` and ``stage: stage5``); the resume checkpoints are keyed by the config, seed included.

Output ``run`` (default ``reports/stage5/seed_42``)::

    model/           the train_symbols output (agent, manifest, telemetry, held-out backtest)
    values.json      hmarl.evaluation.stage5_checklist.seed_values: checklist + telemetry summary
                     (JSON null where a value is not measurable: the gate fails it)
    telemetry.json   a copy of the trainer's per-update telemetry (``series``)
    checklist.json   this seed's checklist criteria judged against ``gate.criteria`` (a per-seed preview;
                     the gate's verdict is over all seeds)
    summary.json     the step's metrics (values, seed, env steps, checklist pass) and the training summary
    manifest.json    seed, total steps, run key, weight set, data fingerprint
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hmarl.config import HmarlConfig
from hmarl.evaluation.gate import evaluate_gate
from hmarl.evaluation.metrics import finite_or_none
from hmarl.evaluation.stage5_checklist import STAGE5_VALUE_NAMES, seed_values
from hmarl.io import read_json, write_json
from hmarl.learners.symbol_stage import train_symbol_stage

log = logging.getLogger(__name__)
# the inputs of train_symbols, whose training this is
INPUTS = {"store": "data/features", "sl_cache": "data/sl_cache", "encoder": "models/encoder"}
OUTPUTS = {"run": "reports/stage5/seed_42"}
PARAMS = ("seed", "stage5", "agent", "ppo", "env", "reward", "gate")


def seed_config(cfg: HmarlConfig) -> HmarlConfig:
    """``cfg`` with ``ppo.total_steps`` set to the Stage 5 budget (the seed is ``cfg.seed`` as given)."""
    ppo = cfg.ppo.model_copy(update={"total_steps": cfg.stage5.total_steps})
    return cfg.model_copy(update={"ppo": ppo})


def checklist_verdict(values: dict[str, float], cfg: HmarlConfig) -> dict:
    """The gate's judgement of this seed's checklist criteria alone (those of STAGE5_VALUE_NAMES that
    ``gate.criteria`` lists); fails closed on NaN like the gate."""
    criteria = {n: c for n, c in cfg.gate.criteria.items() if n in STAGE5_VALUE_NAMES}
    return evaluate_gate(values, cfg.gate.model_copy(update={"criteria": criteria})).to_dict()


def run(cfg: HmarlConfig, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, float]:
    cfg = seed_config(cfg)
    if cfg.stage5.total_steps < cfg.gate.stage5.check_step:
        log.warning(
            "stage5: total_steps %d < gate.stage5.check_step %d: the entropy checks cannot be measured "
            "(NaN, the gate fails them)",
            cfg.stage5.total_steps,
            cfg.gate.stage5.check_step,
        )
    out = Path(outputs["run"])
    model = out / "model"
    tags = {"stage": "stage5", "stage5_seed": str(cfg.seed)}
    train_summary = train_symbol_stage(cfg, inputs, model, tags=tags)

    telemetry = read_json(model / "telemetry.json")
    weights = cfg.reward.weight_sets[cfg.reward.weights]
    values = seed_values(telemetry["series"], cfg.gate.stage5, weights)
    verdict = checklist_verdict(values, cfg)
    manifest = read_json(model / "manifest.json")
    metrics = {
        **values,
        "seed": float(cfg.seed),
        "env_steps": float(train_summary["env_steps"]),
        "checklist_passed": float(verdict["go"]),
    }

    write_json(out / "values.json", {k: finite_or_none(v) for k, v in values.items()})
    shutil.copyfile(model / "telemetry.json", out / "telemetry.json")
    write_json(out / "checklist.json", verdict)
    write_json(
        out / "summary.json",
        {
            "metrics": {k: finite_or_none(v) for k, v in metrics.items()},
            "train": {k: finite_or_none(v) for k, v in train_summary.items()},
        },
    )
    write_json(
        out / "manifest.json",
        {
            "seed": cfg.seed,
            "total_steps": cfg.stage5.total_steps,
            "env_steps": train_summary["env_steps"],
            "run_key": manifest["run_key"],
            "reward_weights": cfg.reward.weights,
            "directive": cfg.ppo.directive,
            "fingerprint": manifest.get("fingerprint"),
            "fold": manifest["fold"],
            "check_step": cfg.gate.stage5.check_step,
            "warmup_steps": cfg.gate.stage5.warmup_steps,
        },
    )
    log.info("stage5 seed %d: checklist %s %s", cfg.seed, verdict["decision"], verdict["failing"] or "")
    return metrics
