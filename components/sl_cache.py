"""KFP component of the sl_cache step (:mod:`hmarl.steps.sl_cache`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sl_cache(config: str, store: Input[Dataset], cache: Output[Dataset], metrics: Output[Metrics]):
    """Supervised priors (MLP / LSTM / GRU next-bar direction), cross-fitted per fold, cached per bar."""
    from hmarl.kfp_glue import run_step

    run_step("sl_cache", config, inputs={"store": store}, outputs={"cache": cache}, metrics=metrics)
