"""The Kubeflow Pipelines DAG (``hmarl_pipeline.py``) and its cluster settings (``cluster.py``)."""
