"""Experiment tracking behind one small interface (:class:`hmarl.tracking.tracker.Tracker`)."""

from hmarl.tracking.tracker import Tracker, flatten_params

__all__ = ["Tracker", "flatten_params"]
