"""KFP component of the ingest step (:mod:`hmarl.steps.ingest`)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(config: str, canonical: Output[Dataset], metrics: Output[Metrics]):
    """Raw bars (synthetic market or data URI) -> canonical dataset: universe, calendar, benchmark."""
    from hmarl.kfp_glue import run_step

    run_step("ingest", config, outputs={"canonical": canonical}, metrics=metrics)
