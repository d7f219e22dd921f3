"""A batch → output JSON records (input record + output columns) and DLQ headers."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.stream.batch import Batch, Reject
from tidal.stream.encode import column_fragments, dlq_headers, encode_outputs


def batch_of(values: list[bytes]) -> Batch:
    """A batch whose raw values are exactly ``values`` (rows parsed from them)."""
    b = Batch.from_rows([orjson.loads(v) for v in values])
    b.values = list(values)
    return b


INPUTS = [b'{"a":1,"s":"x"}', b'{"a":2,"s":"y","nested":{"k":[1,2]}}', b'{"a":3,"s":"z"}']


def test_output_is_input_record_plus_columns_of_each_kind():
    b = batch_of(INPUTS)
    cols = {
        "f": np.array([0.25, -1.5, 1e-9]),
        "i": np.array([1, -2, 2**40], dtype=np.int64),
        "u": np.array([0, 1, 255], dtype=np.uint8),
        "b": np.array([True, False, True]),
        "s": np.array(["p", "q", "r"], dtype=object),  # same name as an input field: appended after it
        "o": np.array([{"k": 1}, [1, 2], None], dtype=object),
        "l": [None, 3, 2.5],  # a plain list, not an array
    }
    for name, values in cols.items():
        b.with_column(name, values)
    out = encode_outputs(b)
    assert len(out) == 3
    for raw_in, raw_out, i in zip(INPUTS, out, range(3)):
        parsed = orjson.loads(raw_out)
        expected = orjson.loads(raw_in)
        for name, values in cols.items():
            v = values[i]
            expected[name] = v.item() if isinstance(v, np.generic) else v
        assert parsed == expected
    assert [type(orjson.loads(o)["i"]) for o in out] == [int, int, int]
    assert [type(orjson.loads(o)["b"]) for o in out] == [bool, bool, bool]


def test_output_keeps_input_bytes_as_prefix():
    """Input fields are spliced, not re-encoded: spacing and key order of the input survive."""
    raw = [b'{ "z" : 1,  "a" : [1, 2] }', b'{"b":  2.50}']
    b = batch_of(raw).with_column("score", np.array([0.5, 0.75]))
    out = encode_outputs(b)
    assert out[0].startswith(raw[0].rstrip()[:-1].rstrip())
    assert out[1].startswith(b'{"b":  2.50')
    assert orjson.loads(out[0]) == {"z": 1, "a": [1, 2], "score": 0.5}


def test_non_output_columns_are_not_written():
    b = batch_of(INPUTS)
    b.column("a")  # cached input column
    b.with_column("hidden", np.array([1.0, 2.0, 3.0]), output=False)
    b.with_column("shown", np.array([4.0, 5.0, 6.0]))
    assert [set(orjson.loads(o)) for o in encode_outputs(b)] == [{"a", "s", "shown"}, {"a", "s", "nested", "shown"},
                                                                 {"a", "s", "shown"}]


def test_outputs_in_declared_order():
    b = batch_of([b'{"a":1}']).with_column("z", [1]).with_column("m", [2]).with_column("b", [3])
    assert list(orjson.loads(encode_outputs(b)[0])) == ["a", "z", "m", "b"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_become_null(bad):
    b = batch_of([b'{"a":1}', b'{"a":2}', b'{"a":3}']).with_column("f", np.array([1.5, bad, 2.5]))
    parsed = [orjson.loads(o) for o in encode_outputs(b)]
    assert [p["f"] for p in parsed] == [1.5, None, 2.5]


def test_nan_in_object_column_becomes_null():
    b = batch_of([b'{"a":1}', b'{"a":2}']).with_column("o", np.array([float("nan"), "x"], dtype=object))
    assert [orjson.loads(o)["o"] for o in encode_outputs(b)] == [None, "x"]


def test_float32_column_and_nan():
    b = batch_of([b'{"a":1}', b'{"a":2}']).with_column("f", np.array([0.5, np.nan], dtype=np.float32))
    assert [orjson.loads(o)["f"] for o in encode_outputs(b)] == [0.5, None]


TRICKY = ['a,b', 'say "hi"', "back\\slash", "é ü 中文 🐟", "}{", "line\nbreak", "", "tab\t,\"x\":1"]


def test_tricky_strings_survive():
    raw = [orjson.dumps({"i": i, "orig": s}) for i, s in enumerate(TRICKY)]
    b = batch_of(raw).with_column("label", np.array(TRICKY[::-1], dtype=object))
    parsed = [orjson.loads(o) for o in encode_outputs(b)]
    assert [p["label"] for p in parsed] == TRICKY[::-1]
    assert [p["orig"] for p in parsed] == TRICKY


def test_many_distinct_strings_survive():
    """More distinct values than the memoised path handles: the per-value path."""
    labels = [f"v,{i}\"é" for i in range(600)]
    b = batch_of([b'{"a":1}'] * 600).with_column("label", np.array(labels, dtype=object))
    assert [orjson.loads(o)["label"] for o in encode_outputs(b)] == labels


def test_mixed_type_object_column_keeps_each_type():
    values = np.array([True, 1, 1.0, 0, False], dtype=object)
    b = batch_of([b'{"a":1}'] * 5).with_column("o", values)
    parsed = [orjson.loads(o)["o"] for o in encode_outputs(b)]
    assert [(type(p), p) for p in parsed] == [(bool, True), (int, 1), (float, 1.0), (int, 0), (bool, False)]


@pytest.mark.parametrize("first_varies", [True, False])
def test_columns_with_one_value_for_every_row_interleave_with_varying_ones(first_varies):
    """Constant columns (model, version, topic) are folded into shared bytes; the order stays declared."""
    b = batch_of([b"{}", *INPUTS])
    n = len(b)
    cols = {"model": np.full(n, "fraud", dtype=object), "score": np.array([0.5, 0.25, 0.125, 1.0]),
            "version": np.full(n, 3, dtype=np.int64), "topic": np.full(n, "t", dtype=object),
            "offset": np.arange(n, dtype=np.int64), "flag": np.full(n, True)}
    names = list(cols) if first_varies else list(cols)[::-1]
    for name in names:
        b.with_column(name, cols[name])
    out = encode_outputs(b)
    for i, (raw_in, raw_out) in enumerate(zip([b"{}", *INPUTS], out)):
        expected = orjson.loads(raw_in) | {name: np.asarray(cols[name][i]).item() for name in names}
        assert orjson.loads(raw_out) == expected
        assert list(orjson.loads(raw_out))[-len(names):] == names


def test_empty_object_input_gives_valid_json():
    b = batch_of([b"{}", b'{"a":1}', b"{}"]).with_column("score", np.array([0.1, 0.2, 0.3]))
    b.with_column("tag", np.array(["x", "y", "z"], dtype=object))
    out = encode_outputs(b)
    assert [orjson.loads(o) for o in out] == [{"score": 0.1, "tag": "x"}, {"a": 1, "score": 0.2, "tag": "y"},
                                              {"score": 0.3, "tag": "z"}]


@pytest.mark.parametrize("raw", [b'{"a":1} ', b'{"a":1}\n', b'{"a":1}\r\n\t ', b"{}\n", b"{}  \n", b' {"a":1} '])
def test_trailing_whitespace_gives_valid_json(raw):
    b = batch_of([raw, b'{"a":2}']).with_column("score", np.array([0.5, 0.6]))
    out = encode_outputs(b)
    assert orjson.loads(out[0]) == {**orjson.loads(raw), "score": 0.5}
    assert orjson.loads(out[1]) == {"a": 2, "score": 0.6}


@pytest.mark.parametrize("raw", [b"{ }", b"{\n}", b"{ }\n", b" {}"])
def test_empty_object_with_inner_whitespace_gives_valid_json(raw):
    b = batch_of([raw]).with_column("score", np.array([0.5]))
    assert orjson.loads(encode_outputs(b)[0]) == {"score": 0.5}


def test_no_output_columns_returns_original_values():
    raw = [b'{ "a" : 1 }', b'{"b":[1, 2]}\n']
    b = batch_of(raw)
    b.column("a")  # an input column, not an output
    assert encode_outputs(b) == raw


def test_empty_batch():
    b = Batch.from_rows([]).with_column("score", np.empty(0))
    assert encode_outputs(b) == []


def test_column_fragments_numeric_and_object():
    assert column_fragments(np.array([1, 2])) == [b"1", b"2"]
    assert column_fragments(np.array([True, False])) == [b"true", b"false"]
    assert column_fragments(np.array([], dtype=np.float64)) == []
    assert [orjson.loads(f) for f in column_fragments(["a,b", None])] == ["a,b", None]


def test_dlq_headers():
    r = Reject(value=b"raw", key=b"k", topic="fraud.events", partition=3, offset=12345, timestamp=1_700_000_000_123,
               reason="wrong_type", message="Expected `float`, got `str` - at `$.amount` é", step="decode")
    headers = dlq_headers(r, "fraud")
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    h = dict(headers)
    assert len(h) == len(headers)  # no duplicate header names
    assert h["tidal.error.reason"] == b"wrong_type"
    assert h["tidal.error.message"].decode("utf-8") == r.message
    assert h["tidal.error.step"] == b"decode"
    assert h["tidal.pipeline"] == b"fraud"
    assert h["tidal.source.topic"] == b"fraud.events"
    assert int(h["tidal.source.partition"]) == 3
    assert int(h["tidal.source.offset"]) == 12345
    assert int(h["tidal.source.timestamp"]) == 1_700_000_000_123


def test_dlq_header_message_is_bounded():
    r = Reject(None, None, "t", 0, 0, 0, "step_error", "x" * 100_000, "s")
    assert len(dict(dlq_headers(r, "p"))["tidal.error.message"]) <= 4096
