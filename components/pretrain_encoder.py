"""KFP component of the pretrain_encoder step (:mod:`hmarl.steps.pretrain_encoder`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from pipelines.cluster import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain_encoder(
    config: str,
    checkpoint_root: str,
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Output[Model],
    metrics: Output[Metrics],
):
    """Shared multi-branch encoder, pretrained by masked reconstruction + return forecasting per fold."""
    from hmarl.kfp_glue import run_step

    run_step(
        "pretrain_encoder",
        config,
        inputs={"store": store, "sl_cache": sl_cache},
        outputs={"encoder": encoder},
        metrics=metrics,
        checkpoint_root=checkpoint_root,
    )
