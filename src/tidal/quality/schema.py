"""Record schemas: the fields an event must have, and their types.

A schema is declared once, in Python or YAML, and compiled into a ``msgspec`` decoder that
parses and type-checks a whole micro-batch of JSON in C. Fields not in the schema pass
through untouched.

>>> s = Schema.from_dict({"amount": "float", "merchant": "str", "note": {"type": "str", "required": False}})
>>> [f.name for f in s.fields]
['amount', 'merchant', 'note']
>>> s.decode_one(b'{"amount": 3, "merchant": "m1"}')
{'amount': 3.0, 'merchant': 'm1', 'note': None}
>>> s.decode_one(b'{"merchant": "m1"}')
Traceback (most recent call last):
...
tidal.quality.schema.RecordError: missing_field: Object missing required field `amount`
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import msgspec

__all__ = ["Field", "Schema", "RecordError", "TYPES"]

TYPES: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


class RecordError(ValueError):
    """One record failed to decode; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def classify(exc: Exception) -> RecordError:
    """Map a msgspec error to a DLQ reason: ``invalid_json``, ``missing_field`` or ``wrong_type``."""
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        reason = "missing_field" if "missing required field" in text else "wrong_type"
    else:
        reason = "invalid_json"
    return RecordError(reason, text)


@dataclass(frozen=True)
class Field:
    """One field: ``type`` is float, int, str or bool; optional fields decode to ``None``."""

    name: str
    type: str = "float"
    required: bool = True

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}; use one of {sorted(TYPES)}")

    @property
    def python_type(self) -> Any:
        base = TYPES[self.type]
        return base if self.required else base | None


@dataclass(frozen=True)
class Schema:
    """An ordered set of fields, compiled into fast batch and single-record decoders."""

    fields: tuple[Field, ...]

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "Schema":
        """From ``{name: type}`` or ``{name: {type: ..., required: ...}}`` (the YAML form)."""
        fields = []
        for name, value in spec.items():
            if isinstance(value, str):
                fields.append(Field(name, value))
            else:
                fields.append(Field(name, **dict(value)))
        return cls(tuple(fields))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @cached_property
    def struct(self) -> type[msgspec.Struct]:
        spec = []
        for f in self.fields:
            spec.append((f.name, f.python_type) if f.required else (f.name, f.python_type, None))
        # Fields are scalars, so records cannot form cycles: keep them out of the cyclic GC.
        return msgspec.defstruct("Record", spec, kw_only=True, gc=False)

    @cached_property
    def batch_decoder(self) -> msgspec.json.Decoder:
        return msgspec.json.Decoder(list[self.struct])

    @cached_property
    def one_decoder(self) -> msgspec.json.Decoder:
        return msgspec.json.Decoder(self.struct)

    def decode_one(self, value: bytes) -> dict[str, Any]:
        """Decode one record into a dict of the schema's fields, or raise :class:`RecordError`."""
        try:
            rec = self.one_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise classify(exc) from None
        return msgspec.structs.asdict(rec)
