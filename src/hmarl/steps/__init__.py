"""Pipeline steps. Each module ``hmarl.steps.<name>`` defines

    INPUTS:  dict[str, str]   input name  -> default path (relative to the repo root)
    OUTPUTS: dict[str, str]   output name -> default path
    PARAMS:  tuple[str, ...]  the params.yaml sections it reads (``profile`` and ``profiles`` always count)
    UNCACHED: tuple[str, ...] optional: outputs DVC keeps in the workspace only (no cache)
    run(cfg, inputs, outputs) -> dict[str, float]

and nothing else is needed for the CLI, DVC and KFP front ends (see :mod:`hmarl.steps.runner`).
``dvc.yaml`` is generated from these and each step's import closure (:mod:`hmarl.wiring`,
``hmarl pipeline sync``); a test fails when the committed file drifts from it.
"""

# Pipeline order; the DAG in dvc.yaml and pipelines/ follows it.
STEP_NAMES: tuple[str, ...] = (
    "ingest",
    "validate",
    "features",
    "sl_cache",
    "pretrain_encoder",
    "train_symbols",
    "train_master",
    "stage5",
    "walk_forward",
    "gate",
    "promote",
)
