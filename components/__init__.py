"""KFP components: one module per pipeline step, each a few lines around :func:`hmarl.kfp_glue.run_step`.

A component's body is serialized into the pipeline IR and runs in the project image (``IMAGE`` in
``pipelines/cluster.py``, built from the Dockerfile with hmarl installed), so every import sits inside
the body and nothing is pip-installed at run time (``install_kfp_package=False``). Artifact parameters
carry the step's INPUTS / OUTPUTS names, so the glue maps them onto the step runner one to one. Every module
but ``gate.py`` and ``resolve_config.py`` is generated from the step contracts (``hmarl pipeline sync``,
``hmarl/wiring/kfp.py``): edit the step, not the component.
"""
