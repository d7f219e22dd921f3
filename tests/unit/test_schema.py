"""Record schemas: types, optional fields, error reasons, construction from dicts."""

from __future__ import annotations

import pytest

from tidal.quality.schema import Field, RecordError, Schema
from tidal.stream.schema import INT64


@pytest.fixture
def schema():
    return Schema.from_dict({"amount": "float", "count": "int", "name": "str", "flag": "bool"})


GOOD = b'{"amount": 2.5, "count": 3, "name": "m1", "flag": true}'


def test_decodes_each_type(schema):
    rec = schema.decode_one(GOOD)
    assert rec == {"amount": 2.5, "count": 3, "name": "m1", "flag": True}
    assert type(rec["amount"]) is float
    assert type(rec["count"]) is int
    assert type(rec["name"]) is str
    assert type(rec["flag"]) is bool


def test_int_accepted_for_float_and_becomes_float(schema):
    rec = schema.decode_one(b'{"amount": 3, "count": 3, "name": "m1", "flag": false}')
    assert rec["amount"] == 3.0
    assert type(rec["amount"]) is float


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("count", "true"),      # bool is not an int
        ("count", "1.5"),       # float is not an int
        ("count", '"3"'),       # numeric string is not an int
        ("amount", "true"),     # bool is not a float
        ("amount", '"2.5"'),    # numeric string is not a float
        ("name", "5"),          # number is not a str
        ("flag", "1"),          # int is not a bool
        ("amount", "null"),     # null for a required field
        ("amount", "[1]"),
        ("name", "{}"),
    ],
)
def test_wrong_type(schema, field, value):
    rec = {"amount": "1.0", "count": "1", "name": '"n"', "flag": "true", field: value}
    raw = ("{" + ",".join(f'"{k}": {v}' for k, v in rec.items()) + "}").encode()
    with pytest.raises(RecordError) as info:
        schema.decode_one(raw)
    assert info.value.reason == "wrong_type"
    assert field in info.value.message


@pytest.mark.parametrize("missing", ["amount", "count", "name", "flag"])
def test_missing_field(schema, missing):
    rec = {"amount": 1.0, "count": 1, "name": "n", "flag": True}
    del rec[missing]
    import orjson

    with pytest.raises(RecordError) as info:
        schema.decode_one(orjson.dumps(rec))
    assert info.value.reason == "missing_field"
    assert missing in info.value.message


@pytest.mark.parametrize("raw", [b"not json", b'{"amount": 1', b"", b"{'amount': 1}", b'{"amount": 1,}'])
def test_invalid_json(schema, raw):
    with pytest.raises(RecordError) as info:
        schema.decode_one(raw)
    assert info.value.reason == "invalid_json"


def test_record_error_is_value_error_with_reason_prefix(schema):
    with pytest.raises(ValueError) as info:
        schema.decode_one(b"nope")
    err = info.value
    assert isinstance(err, RecordError)
    assert str(err) == f"{err.reason}: {err.message}"


def test_optional_fields_default_to_none():
    s = Schema.from_dict({"a": "float", "b": {"type": "int", "required": False},
                          "c": {"type": "str", "required": False}})
    assert s.decode_one(b'{"a": 1}') == {"a": 1.0, "b": None, "c": None}
    assert s.decode_one(b'{"a": 1, "b": null, "c": "x"}') == {"a": 1.0, "b": None, "c": "x"}
    assert s.decode_one(b'{"a": 1, "b": 7}')["b"] == 7


def test_optional_field_still_type_checked():
    s = Schema.from_dict({"b": {"type": "int", "required": False}})
    with pytest.raises(RecordError) as info:
        s.decode_one(b'{"b": "seven"}')
    assert info.value.reason == "wrong_type"


def test_extra_fields_are_allowed_and_not_returned():
    s = Schema.from_dict({"a": "float"})
    assert s.decode_one(b'{"a": 1.5, "other": [1, 2], "z": "q"}') == {"a": 1.5}


def test_unknown_type_raises_value_error():
    with pytest.raises(ValueError, match="decimal"):
        Field("price", "decimal")
    with pytest.raises(ValueError, match="price"):
        Schema.from_dict({"price": "decimal"})


def test_from_dict_short_and_long_forms():
    s = Schema.from_dict({
        "a": "float",
        "b": "int",
        "c": {"type": "str"},
        "d": {"type": "bool", "required": False},
        "e": {"required": False},  # type defaults to float
    })
    assert s.names == ["a", "b", "c", "d", "e"]
    assert s.fields == (
        Field("a", "float"),
        Field("b", "int"),
        Field("c", "str", True),
        Field("d", "bool", False),
        Field("e", "float", False),
    )


def test_from_dict_long_form_rejects_unknown_keys():
    """A misspelt option is an error, not silently ignored."""
    with pytest.raises((TypeError, ValueError)):
        Schema.from_dict({"a": {"type": "float", "nullable": True}})


def test_field_defaults():
    f = Field("x")
    assert (f.type, f.required) == ("float", True)
    assert f.python_type is float
    assert Field("x", "int", required=False).python_type == (INT64 | None)  # int is int64: 10**23 is wrong_type


def test_batch_decoder_decodes_a_json_array(schema):
    rows = schema.batch_decoder.decode(b"[" + GOOD + b"," + GOOD + b"]")
    assert len(rows) == 2
    assert rows[1].name == "m1" and rows[1].count == 3


def test_integers_beyond_int64_are_wrong_type_for_that_record_only():
    from tidal.quality.rules import ValidateStep
    from tidal.stream.decode import decode_values
    from tidal.stream.pipeline import Pipeline

    s = Schema.from_dict({"a": "int"})
    b = decode_values([b'{"a":1}', b'{"a":100000000000000000000000}', b'{"a":-3}'], s)
    assert b.column("a").tolist() == [1, -3] and [r.reason for r in b.rejected] == ["wrong_type"]
    lenient = Schema.from_dict({"a": {"type": "int", "coerce": True}})  # coerced strings and floats too
    out, rejects = Pipeline("x", schema=lenient, steps=[ValidateStep(lenient)]).test(
        [b'{"a":"5"}', b'{"a":"1e30"}', b'{"a":1e300}', b'{"a":7}'])
    assert len(out) == 2 and [r.reason for r in rejects] == ["wrong_type", "wrong_type"]
