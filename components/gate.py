"""KFP component of the gate step (:mod:`hmarl.steps.gate`): go/no-go over every seed and fold."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output
from pipelines.cluster import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(
    config: str,
    stage5: Input[list[Dataset]],
    walk_forward: Input[list[Dataset]],
    report: Output[Dataset],
    plots: Output[Dataset],
    evaluations: Output[Dataset],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_md: Output[Markdown],
) -> bool:
    """Lays the collected stage5 / walk_forward outputs out as the gate reads them (``seed_<s>/``,
    ``fold_<k>/``; the folds also as ``evaluations`` for promote), runs the gate, returns go (``dsl.If``)."""
    import tempfile

    from hmarl.kfp_glue import gather, run_step, verdict

    with tempfile.TemporaryDirectory(prefix="hmarl-stage5-") as seeds:
        values = run_step(
            "gate",
            config,
            inputs={"stage5": gather(stage5, seeds), "walk_forward": gather(walk_forward, evaluations.path)},
            outputs={"report": report, "plots": plots},
            metrics=metrics,
            views={"report/report.html": report_html, "report/report.md": report_md},
        )
    return verdict(values)
