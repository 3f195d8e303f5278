"""KFP component of the walk_forward step (:mod:`hmarl.steps.walk_forward`): one task per fold."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from pipelines.cluster import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def walk_forward(
    config_file: Input[Artifact],
    fold: int,
    checkpoint_root: str,
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Input[Model],
    symbols: Input[Model],
    master: Input[Model],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
):
    """Fold ``fold``'s test bars: the policy and every baseline at each cost level (training this fold's
    agents first unless the given models were trained on it). Writes ``<evaluation>/fold_<fold>/``."""
    from hmarl.kfp_glue import nested, read_config, run_step

    run_step(
        "walk_forward",
        read_config(config_file),
        inputs={
            "store": store,
            "sl_cache": sl_cache,
            "encoder": encoder,
            "symbols": symbols,
            "master": master,
        },
        outputs={"evaluation": nested(evaluation, f"fold_{fold}")},
        metrics=metrics,
        overrides=[f"ppo.fold={fold}"],
        checkpoint_root=checkpoint_root,
    )
