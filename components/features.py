"""KFP component of the features step (:mod:`hmarl.steps.features`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def features(
    config: str,
    canonical: Input[Dataset],
    validation: Input[Dataset],
    store: Output[Dataset],
    metrics: Output[Metrics],
):
    """Validated canonical bars -> feature store (causal features, regime, per-fold normalization)."""
    from hmarl.kfp_glue import run_step

    run_step(
        "features",
        config,
        inputs={"canonical": canonical, "validation": validation},
        outputs={"store": store},
        metrics=metrics,
    )
