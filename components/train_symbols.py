"""KFP component of the train_symbols step (:mod:`hmarl.steps.train_symbols`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from pipelines.cluster import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_symbols(
    config: str,
    checkpoint_root: str,
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Symbol agents (PPO, one process per GPU) on the fold's train bars; resumes from the checkpoint PVC."""
    from hmarl.kfp_glue import run_step

    run_step(
        "train_symbols",
        config,
        inputs={"store": store, "sl_cache": sl_cache, "encoder": encoder},
        outputs={"model": model},
        metrics=metrics,
        checkpoint_root=checkpoint_root,
    )
