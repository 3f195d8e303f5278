"""KFP component of the stage5 step (:mod:`hmarl.steps.stage5`): one task per seed of the fan-out."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output
from pipelines.cluster import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def stage5(
    config_file: Input[Artifact],
    seed: int,
    checkpoint_root: str,
    store: Input[Dataset],
    sl_cache: Input[Dataset],
    encoder: Input[Model],
    run: Output[Dataset],
    metrics: Output[Metrics],
):
    """A short independent retrain of the symbol agents with ``seed``: its Stage 5 checklist values.
    Writes ``<run>/seed_<seed>/`` so the gate finds each seed's folder by name."""
    from hmarl.kfp_glue import nested, read_config, run_step

    run_step(
        "stage5",
        read_config(config_file),
        inputs={"store": store, "sl_cache": sl_cache, "encoder": encoder},
        outputs={"run": nested(run, f"seed_{seed}")},
        metrics=metrics,
        overrides=[f"seed={seed}"],
        checkpoint_root=checkpoint_root,
    )
