"""hmarl: hierarchical multi-agent RL trading, delivered as a DVC / Kubeflow pipeline."""

__version__ = "0.1.0"
