"""Record schemas: the fields an event must have, their types, and the rules their values obey.

A schema is declared once, in Python or YAML (or imported from JSON Schema), and compiled
into a ``msgspec`` decoder that parses and type-checks a whole micro-batch of JSON in C.
Fields not in the schema pass through untouched.

>>> s = Schema.from_dict({"amount": "float", "merchant": "str", "note": {"type": "str", "required": False}})
>>> [f.name for f in s.fields]
['amount', 'merchant', 'note']
>>> s.decode_one(b'{"amount": 3, "merchant": "m1"}')
{'amount': 3.0, 'merchant': 'm1', 'note': None}
>>> s.decode_one(b'{"merchant": "m1"}')
Traceback (most recent call last):
...
tidal.stream.schema.RecordError: missing_field: Object missing required field `amount`

Beyond types, a field declares **rules** — ``allow_null`` (or a ``"float?"`` type),
``min``/``max``, ``enum``,
``pattern`` — each with a **policy** (``reject`` → DLQ, ``fix`` → coerce/clip/default,
``flag`` → pass with a flag), and **normalisation** — ``timestamp`` (→ UTC epoch ms),
``unit`` (+ ``unit_field``/``units``), ``coerce`` (numeric strings → numbers), ``trim``,
``case``. :class:`tidal.quality.rules.ValidateStep` enforces them on whole batches:

>>> f = Field("bytes", min=0, max=1e9, policy={"range": "fix"}, unit="B", coerce=True)
>>> f.policy_for("range"), f.policy_for("enum"), f.lenient
('fix', 'reject', True)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields as dc_fields
from functools import cached_property
from typing import Annotated, Any, Mapping

import msgspec

__all__ = ["Field", "Schema", "RecordError", "TYPES", "RULES", "POLICIES", "schema_of"]

INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # JSON ints are unbounded; numpy's are not
TYPES: dict[str, Any] = {"float": float, "int": INT64, "str": str, "bool": bool}
RULES = ("missing", "null", "type", "range", "enum", "pattern")
POLICIES = ("reject", "fix", "flag")
_SCHEMAS: "weakref.WeakKeyDictionary[type, Schema]" = weakref.WeakKeyDictionary()


class RecordError(ValueError):
    """One record failed to decode; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class WireDecodeError(msgspec.DecodeError):
    """A non-JSON payload (Avro, Confluent wire format) could not be decoded."""


def classify(exc: Exception) -> RecordError:
    """Map a msgspec error to a DLQ reason: ``invalid_json``, ``missing_field`` or ``wrong_type``.

    Payloads in a binary wire format (Avro) that fail to decode are ``invalid_payload``.
    """
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        reason = "missing_field" if "missing required field" in text else "wrong_type"
    elif isinstance(exc, WireDecodeError):
        reason = "invalid_payload"
    else:
        reason = "invalid_json"
    return RecordError(reason, text)


def _pairs(value: Any) -> tuple | None:
    if value is None:
        return None
    return tuple(sorted(dict(value).items()))


@dataclass(frozen=True)
class Field:
    """One field: its type (float, int, str, bool), presence, value rules and normalisation.

    ``policy`` is one policy for every rule of the field or ``{rule: policy}`` (rules:
    missing, null, type, range, enum, pattern; unnamed rules reject). ``default`` is what
    ``fix`` puts in a missing, null, mistyped, unknown or mismatching cell (else null).
    """

    name: str
    type: str = "float"
    required: bool = True
    allow_null: bool = False
    min: float | None = None
    max: float | None = None
    enum: tuple | None = None
    pattern: str | None = None
    policy: Any = "reject"
    default: Any = None
    coerce: bool = False
    timestamp: bool | str = False
    unit: str | None = None
    unit_field: str | None = None
    units: Any = None
    trim: bool = False
    case: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.type, str) and self.type.endswith("?"):  # "float?": null is a valid value
            object.__setattr__(self, "type", self.type[:-1])
            object.__setattr__(self, "allow_null", True)
        if self.type not in TYPES:
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}; use one of {sorted(TYPES)}")
        if self.enum is not None and not isinstance(self.enum, tuple):
            object.__setattr__(self, "enum", tuple(self.enum))
        if isinstance(self.policy, Mapping):
            object.__setattr__(self, "policy", _pairs(self.policy))
        if isinstance(self.units, Mapping):
            object.__setattr__(self, "units", _pairs(self.units))
        for rule, pol in self.policies.items():
            if rule not in RULES or pol not in POLICIES:
                raise ValueError(f"field {self.name!r}: policy {rule}={pol!r}; rules {RULES}, policies {POLICIES}")
        if self.case not in (None, "lower", "upper", "fold"):
            raise ValueError(f"field {self.name!r}: case must be lower, upper or fold")
        if self.timestamp and self.type not in ("int", "float"):
            raise ValueError(f"field {self.name!r}: a timestamp field has type int or float (epoch ms)")

    @property
    def policies(self) -> dict[str, str]:
        if isinstance(self.policy, str):
            return dict.fromkeys(RULES, self.policy)
        return dict(self.policy or ())

    def policy_for(self, rule: str) -> str:
        return self.policies.get(rule, "reject")

    @property
    def nullable(self) -> bool:
        """Null is a valid value (``allow_null``, a ``"float?"`` type, or an optional field)."""
        return self.allow_null or not self.required

    @property
    def normalises(self) -> bool:
        return bool(self.coerce or self.timestamp or self.unit or self.trim or self.case)

    @property
    def lenient(self) -> bool:
        """Decoded as any JSON value and checked column-wise by the validate step (not by msgspec)."""
        return self.normalises or self.policy_for("type") != "reject" or self.policy_for("missing") != "reject"

    @property
    def python_type(self) -> Any:
        if self.lenient:
            return Any
        base = TYPES[self.type]
        return base | None if (self.nullable or self.policy_for("null") != "reject") else base

    @property
    def has_rules(self) -> bool:
        return any(v is not None for v in (self.min, self.max, self.enum, self.pattern)) or self.lenient \
            or self.policy_for("null") != "reject" or self.policy_for("missing") != "reject"

    def as_dict(self) -> dict[str, Any]:
        """The YAML form: only what differs from the defaults."""
        out: dict[str, Any] = {}
        for f in dc_fields(self):
            v = getattr(self, f.name)
            if f.name != "name" and v != f.default:
                out[f.name] = dict(v) if f.name in ("units",) else (list(v) if isinstance(v, tuple) and f.name == "enum"
                                                                    else v)
        if isinstance(self.policy, tuple):
            out["policy"] = dict(self.policy)
        return out


@dataclass(frozen=True)
class Schema:
    """An ordered set of fields, compiled into fast batch and single-record decoders.

    ``wire`` (see :mod:`tidal.quality.serdes`) decodes a binary payload — Avro with a schema
    file, or the Confluent wire format through a Schema Registry — instead of JSON.
    """

    fields: tuple[Field, ...]
    wire: Any = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "Schema":
        """From ``{name: type}`` or ``{name: {type: ..., required: ..., min: ...}}`` (the YAML form).

        A JSON Schema document (``{"type": "object", "properties": ...}``) is imported too.
        """
        props = spec.get("properties")
        json_schema = (isinstance(props, Mapping) and all(isinstance(v, Mapping) for v in props.values())
                       and spec.get("type", "object") == "object")  # not a field named "properties"
        if json_schema or "$schema" in spec:
            return cls.from_json_schema(spec)
        fields = []
        for name, value in spec.items():
            if isinstance(value, str):
                fields.append(Field(name, value))
            else:
                fields.append(Field(name, **dict(value)))
        return cls(tuple(fields))

    @classmethod
    def from_json_schema(cls, doc: Mapping[str, Any]) -> "Schema":
        """Import a JSON Schema object: types, ``required``, min/max, enum, pattern, date-time, null.

        Object and array properties are not fields: they pass through untouched.
        """
        kinds = {"number": "float", "integer": "int", "string": "str", "boolean": "bool"}
        required = set(doc.get("required") or ())
        fields = []
        for name, prop in (doc.get("properties") or {}).items():
            types = prop.get("type", "string")
            types = [types] if isinstance(types, str) else list(types)
            nullable = "null" in types
            main = [t for t in types if t != "null"]
            if len(main) != 1 or main[0] not in kinds:
                continue
            kind = kinds[main[0]]
            stamp = prop.get("format") in ("date-time", "date")
            lo = prop.get("minimum", prop.get("exclusiveMinimum"))
            hi = prop.get("maximum", prop.get("exclusiveMaximum"))
            fields.append(Field(name, "int" if stamp else kind, required=name in required, allow_null=nullable,
                                min=lo, max=hi, enum=tuple(prop["enum"]) if "enum" in prop else None,
                                pattern=prop.get("pattern"), timestamp=stamp))
        return cls(tuple(fields))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @cached_property
    def struct(self) -> type[msgspec.Struct]:
        spec = []
        for f in self.fields:
            if f.required and f.policy_for("missing") == "reject":
                spec.append((f.name, f.python_type))
            else:  # missing → None (optional) or UNSET (the validate step applies the missing policy)
                spec.append((f.name, f.python_type, None if not f.required else msgspec.UNSET))
        # Fields are scalars, so records cannot form cycles: keep them out of the cyclic GC.
        struct = msgspec.defstruct("Record", spec, kw_only=True, gc=False)
        _SCHEMAS[struct] = self
        return struct

    @cached_property
    def batch_decoder(self) -> msgspec.json.Decoder:
        return msgspec.json.Decoder(list[self.struct])

    @cached_property
    def one_decoder(self) -> Any:
        """Something with ``decode(bytes)``: msgspec's JSON decoder, or the wire format's.

        JSON nested deeper than msgspec's recursion limit (in any field, known or not) is a
        ``DecodeError`` (→ ``invalid_json``), not a ``RecursionError`` that would stop the worker.
        """
        if self.wire is not None:
            return _Guarded(self.wire.decoder(self.struct).decode)
        return _Guarded(msgspec.json.Decoder(self.struct).decode)

    @property
    def has_rules(self) -> bool:
        """Some field needs the validate step (rules, normalisation or non-reject policies)."""
        return any(f.has_rules for f in self.fields)

    def decode_one(self, value: bytes) -> dict[str, Any]:
        """Decode one record into a dict of the schema's fields, or raise :class:`RecordError`."""
        try:
            rec = self.one_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise classify(exc) from None
        return msgspec.structs.asdict(rec)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this schema (``from_dict`` reads it back)."""
        return {f.name: (f.as_dict() if len(f.as_dict()) > 1 else f.type) for f in self.fields}


class _Guarded:
    """``decode`` that turns a RecursionError (absurdly deep JSON) into a ``msgspec.DecodeError``."""

    __slots__ = ("_decode", "raw")

    def __init__(self, decode: Any) -> None:
        self._decode = self.raw = decode  # ``raw``: unguarded, for callers that catch RecursionError

    def decode(self, value: bytes) -> Any:
        try:
            return self._decode(value)
        except RecursionError:
            raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None


def schema_of(row: Any) -> Schema | None:
    """The schema whose decoder produced ``row`` (a record of a decoded batch), if any."""
    return _SCHEMAS.get(type(row))
