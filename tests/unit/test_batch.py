"""Micro-batches: typed columns, select/reject alignment, output columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tidal.quality.schema import Schema
from tidal.stream.batch import Batch


def typed_batch(rows, types):
    return Batch.from_rows(rows, types=types)


@pytest.mark.parametrize(
    ("kind", "values", "dtype"),
    [
        ("float", [1.0, 2.5, -3.0], np.float64),
        ("int", [1, 2, 3], np.int64),
        ("bool", [True, False, True], np.bool_),
        ("str", ["a", "b", "c"], np.object_),
    ],
)
def test_column_dtype_follows_schema_type(kind, values, dtype):
    b = typed_batch([{"v": v} for v in values], {"v": kind})
    col = b.column("v")
    assert col.dtype == dtype
    assert col.tolist() == values


@pytest.mark.parametrize("kind", ["float", "int", "bool", "str"])
def test_column_of_empty_batch_has_schema_dtype(kind):
    col = typed_batch([], {"v": kind}).column("v")
    assert len(col) == 0
    assert col.dtype == {"float": np.float64, "int": np.int64, "bool": np.bool_, "str": np.object_}[kind]


def test_float_column_from_int_values_is_float():
    col = typed_batch([{"v": 1}, {"v": 2}], {"v": "float"}).column("v")
    assert col.dtype == np.float64


def test_nullable_int_becomes_float_with_nan():
    col = typed_batch([{"v": 1}, {"v": None}, {"v": 3}], {"v": "int"}).column("v")
    assert col.dtype == np.float64
    assert col[0] == 1.0 and math.isnan(col[1]) and col[2] == 3.0


def test_nullable_bool_becomes_float_with_nan():
    col = typed_batch([{"v": True}, {"v": None}], {"v": "bool"}).column("v")
    assert col.dtype == np.float64
    assert col[0] == 1.0 and math.isnan(col[1])


def test_missing_key_in_typed_float_column_is_nan():
    col = typed_batch([{"v": 1.5}, {"w": 2}], {"v": "float"}).column("v")
    assert col.dtype == np.float64
    assert col[0] == 1.5 and math.isnan(col[1])


def test_none_in_typed_float_column_is_nan():
    col = typed_batch([{"v": 1.5}, {"v": None}, {"v": 2}], {"v": "float"}).column("v")
    assert col.dtype == np.float64
    assert col[0] == 1.5 and math.isnan(col[1]) and col[2] == 2.0


def test_nullable_str_keeps_none():
    col = typed_batch([{"v": "a"}, {"v": None}], {"v": "str"}).column("v")
    assert col.tolist() == ["a", None]


def test_column_from_schema_structs():
    """Rows decoded with a schema are msgspec structs; columns read their attributes."""
    schema = Schema.from_dict({"x": "float", "n": {"type": "int", "required": False}})
    rows = [schema.one_decoder.decode(b'{"x": 1, "n": 5}'), schema.one_decoder.decode(b'{"x": 2}')]
    b = Batch(values=[b"1", b"2"], keys=[None, None], topics=["t", "t"], partitions=np.zeros(2, np.int32),
              offsets=np.arange(2, dtype=np.int64), timestamps=np.zeros(2, np.int64), rows=rows,
              types={f.name: f.type for f in schema.fields})
    assert b.column("x").tolist() == [1.0, 2.0]
    n = b.column("n")
    assert n.dtype == np.float64 and n[0] == 5 and math.isnan(n[1])


def test_column_is_cached():
    b = Batch.from_rows([{"x": 1.0}])
    assert b.column("x") is b.column("x")


def test_from_rows_positions():
    b = Batch.from_rows([{"x": 1}, {"x": 2}, {"x": 3}], topic="src")
    assert b.topics == ["src"] * 3
    assert b.partitions.tolist() == [0, 0, 0]
    assert b.offsets.tolist() == [0, 1, 2]
    assert b.keys == [None] * 3
    assert len(b.values) == 3 and b.values[1] == b'{"x":2}'


def positioned_batch(n=6):
    rows = [{"x": float(i), "s": f"s{i}"} for i in range(n)]
    b = Batch.from_rows(rows, types={"x": "float", "s": "str"})
    b.keys = [f"k{i}".encode() for i in range(n)]
    b.topics = [f"t{i % 2}" for i in range(n)]
    b.partitions = np.arange(n, dtype=np.int32) % 3
    b.offsets = np.arange(100, 100 + n, dtype=np.int64)
    b.timestamps = np.arange(1000, 1000 + n, dtype=np.int64)
    b.column("x")
    b.with_column("y", b.column("x") * 10)
    b.with_column("hidden", np.arange(n) + 0.5, output=False)
    return b


def assert_aligned(b):
    """Every per-row array still refers to the same original row (row i has x == i)."""
    idx = [int(x) for x in b.column("x").tolist()]
    assert [r["x"] for r in b.rows] == [float(i) for i in idx]
    assert b.values == [f'{{"x":{float(i)},"s":"s{i}"}}'.encode() for i in idx]
    assert b.keys == [f"k{i}".encode() for i in idx]
    assert b.topics == [f"t{i % 2}" for i in idx]
    assert b.partitions.tolist() == [i % 3 for i in idx]
    assert b.offsets.tolist() == [100 + i for i in idx]
    assert b.timestamps.tolist() == [1000 + i for i in idx]
    assert b.columns["y"].tolist() == [10.0 * i for i in idx]
    assert b.columns["hidden"].tolist() == [i + 0.5 for i in idx]
    assert len(b) == len(idx)


def test_select_keeps_arrays_aligned():
    b = positioned_batch()
    mask = np.array([True, False, True, True, False, True])
    out = b.select(mask)
    assert [int(x) for x in out.column("x")] == [0, 2, 3, 5]
    assert_aligned(out)
    assert out.outputs == ["y"]
    assert len(b) == 6  # the original is untouched
    assert_aligned(b)


def test_select_accepts_int_mask_as_bool():
    b = positioned_batch()
    out = b.select(np.array([1, 0, 0, 0, 0, 1]))
    assert [int(x) for x in out.column("x")] == [0, 5]


def test_select_nothing():
    out = positioned_batch().select(np.zeros(6, bool))
    assert len(out) == 0
    assert_aligned(out)


def test_reject_moves_rows_with_positions_and_keeps_rest_aligned():
    b = positioned_batch()
    mask = b.column("x") % 2 == 1
    out = b.reject(mask, "odd", "x is odd", step="check")
    assert [int(x) for x in out.column("x")] == [0, 2, 4]
    assert_aligned(out)
    assert [(r.offset, r.partition, r.topic, r.key, r.timestamp) for r in out.rejected] == [
        (101, 1, "t1", b"k1", 1001), (103, 0, "t1", b"k3", 1003), (105, 2, "t1", b"k5", 1005)]
    assert [r.value for r in out.rejected] == [b.values[i] for i in (1, 3, 5)]
    assert {(r.reason, r.message, r.step) for r in out.rejected} == {("odd", "x is odd", "check")}


def test_reject_per_row_messages_indexed_by_original_row():
    b = positioned_batch()
    messages = [f"row {i}" for i in range(6)]
    out = b.reject(np.array([False, True, False, False, True, False]), "bad", messages, step="s")
    assert [(r.offset, r.message) for r in out.rejected] == [(101, "row 1"), (104, "row 4")]


def test_rejects_accumulate_and_survive_select():
    b = positioned_batch()
    b = b.reject(np.array([True, False, False, False, False, False]), "r1", "m", "s1")
    b = b.reject(np.array([False, True, False, False, False]), "r2", "m", "s2")
    b = b.select(np.array([True, False, True, True]))
    assert [(r.reason, r.offset) for r in b.rejected] == [("r1", 100), ("r2", 102)]
    assert [int(x) for x in b.column("x")] == [1, 4, 5]
    assert_aligned(b)


def test_reject_with_empty_mask_changes_nothing():
    b = positioned_batch()
    out = b.reject(np.zeros(6, bool), "r", "m", "s")
    assert len(out) == 6 and out.rejected == []


def test_reject_does_not_mutate_original_rejected_list():
    b = positioned_batch()
    b.reject(np.array([True, False, False, False, False, False]), "r", "m", "s")
    assert b.rejected == []


def test_reject_all():
    b = positioned_batch()
    b = b.reject(np.array([False, False, True, False, False, False]), "first", "m", "s0")
    out = b.reject_all("model_error", "boom", "score")
    assert len(out) == 0
    assert [(r.reason, r.offset) for r in out.rejected] == [
        ("first", 102), ("model_error", 100), ("model_error", 101), ("model_error", 103),
        ("model_error", 104), ("model_error", 105)]
    assert all(r.message == "boom" and r.step == "score" for r in out.rejected[1:])


def test_reject_all_of_empty_batch():
    out = Batch.from_rows([]).reject_all("r", "m", "s")
    assert len(out) == 0 and out.rejected == []


@pytest.mark.parametrize("n", [0, 2, 4])
def test_with_column_wrong_length_raises(n):
    b = Batch.from_rows([{"x": 1}, {"x": 2}, {"x": 3}])
    with pytest.raises(ValueError, match="y"):
        b.with_column("y", np.zeros(n))
    assert "y" not in b.columns and b.outputs == []


def test_with_column_outputs_once_and_sequence_input():
    b = Batch.from_rows([{"x": 1}, {"x": 2}])
    b.with_column("y", [1, 2])
    b.with_column("y", [3, 4])
    assert b.outputs == ["y"]
    assert isinstance(b.columns["y"], np.ndarray)
    assert b.columns["y"].tolist() == [3, 4]
    b.with_column("z", [0, 0], output=False)
    assert b.outputs == ["y"]
    assert b.column("z").tolist() == [0, 0]  # column() serves computed columns too
