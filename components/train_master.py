"""KFP component of the train_master step (:mod:`hmarl.steps.train_master`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from pipelines.cluster import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_master(
    config: str,
    checkpoint_root: str,
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Input[Model],
    symbols: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Master agent (MAPPO over the directive grid) above the frozen symbol agents."""
    from hmarl.kfp_glue import run_step

    run_step(
        "train_master",
        config,
        inputs={"store": store, "sl_cache": sl_cache, "encoder": encoder, "symbols": symbols},
        outputs={"model": model},
        metrics=metrics,
        checkpoint_root=checkpoint_root,
    )
