"""The base of every params section: unknown keys are errors, numbers are finite, values are immutable once
loaded.

Its own module so each package's ``params.py`` (imported by :mod:`hmarl.config`) can share it
without importing ``hmarl.config`` back.
"""

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

# YAML 1.1 (PyYAML) reads 1e9 as a string (it wants 1.0e+9); a number field takes it as the number
_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _numeric(annotation: Any) -> type | None:
    """int or float when a field holds one (optionally ``| None``), else None."""
    if annotation in (int, float):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None
    return None


class Section(BaseModel):
    # NaN / infinity in params is always a mistake (a NaN learning rate trains nothing, silently)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _scientific_numbers(cls, data: Any) -> Any:
        """``1e9`` for an int field is 1000000000 (refused where not integral, as 1.5 would be)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key)
            kind = _numeric(field.annotation) if field is not None else None
            if kind is not None and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
                number = float(value)
                out[key] = int(number) if kind is int and number.is_integer() else number
        return out
