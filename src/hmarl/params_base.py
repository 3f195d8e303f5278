"""The base of every params section: unknown keys are errors, values are immutable once loaded.

Its own module so each package's ``params.py`` (imported by :mod:`hmarl.config`) can share it
without importing ``hmarl.config`` back.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
