"""KFP component of the promote step (:mod:`hmarl.steps.promote`); runs only on the gate's go."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    config: str,
    gate: Input[Dataset],
    walk_forward: Input[Dataset],
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Input[Model],
    symbols: Input[Model],
    master: Input[Model],
    decision: Output[Dataset],
    metrics: Output[Metrics],
):
    """The act bundle registered in MLflow with its lineage; champion/challenger, then the alias."""
    from hmarl.kfp_glue import run_step

    run_step(
        "promote",
        config,
        inputs={
            "gate": gate,
            "walk_forward": walk_forward,
            "store": store,
            "sl_cache": sl_cache,
            "encoder": encoder,
            "symbols": symbols,
            "master": master,
        },
        outputs={"decision": decision},
        metrics=metrics,
    )
