"""KFP component of the validate step (:mod:`hmarl.steps.validate`)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    config: str,
    canonical: Input[Dataset],
    report: Output[Dataset],
    report_html: Output[HTML],
    metrics: Output[Metrics],
):
    """Great Expectations suite over the canonical dataset; bad data fails the task and stops the run."""
    from hmarl.kfp_glue import run_step

    run_step(
        "validate",
        config,
        inputs={"canonical": canonical},
        outputs={"report": report},
        metrics=metrics,
        views={"report/report.html": report_html},
    )
