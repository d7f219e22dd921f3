"""Consumed messages → a batch plus the offsets to commit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tidal.quality.schema import Schema
from tidal.stream.decode import decode_messages, next_offsets


@dataclass(frozen=True)
class Msg:
    """Duck-types confluent_kafka.Message (like pipeline._MemoryMessage, with keys/partitions/timestamps)."""

    _value: bytes | None
    _offset: int
    _partition: int = 0
    _topic: str = "t.events"
    _key: bytes | None = None
    _ts: int = 0

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, self._ts)  # (TIMESTAMP_CREATE_TIME, ms)

    def error(self):
        return None


SCHEMA = Schema.from_dict({"x": "float", "n": "int"})


def msgs(values, partition=0, topic="t.events", start=100):
    return [Msg(v, start + i, partition, topic, f"k{start + i}".encode(), 1_700_000_000_000 + i)
            for i, v in enumerate(values)]


def test_good_rows_kept_in_order_with_positions():
    ms = msgs([b'{"x": 1, "n": 10}', b'{"x": 2.5, "n": 20}', b'{"x": -1, "n": 30, "extra": "e"}'])
    batch, offsets = decode_messages(ms, SCHEMA)
    assert len(batch) == 3
    assert batch.rejected == []
    assert batch.column("x").tolist() == [1.0, 2.5, -1.0]
    assert batch.column("n").tolist() == [10, 20, 30]
    assert batch.offsets.tolist() == [100, 101, 102]
    assert batch.partitions.tolist() == [0, 0, 0]
    assert batch.topics == ["t.events"] * 3
    assert batch.keys == [b"k100", b"k101", b"k102"]
    assert batch.timestamps.tolist() == [1_700_000_000_000 + i for i in range(3)]
    assert batch.values == [m.value() for m in ms]
    assert batch.types == {"x": "float", "n": "int"}
    assert offsets == {("t.events", 0): 103}


def test_bad_rows_rejected_with_original_bytes_reason_and_position():
    values = [
        b'{"x": 1, "n": 1}',
        b"garbage{",
        b'{"x": 2, "n": 2}',
        b'{"n": 3}',
        b'{"x": "three", "n": 3}',
        b'{"x": 4, "n": 4}',
    ]
    ms = msgs(values, partition=2)
    batch, offsets = decode_messages(ms, SCHEMA)
    assert batch.column("x").tolist() == [1.0, 2.0, 4.0]
    assert batch.offsets.tolist() == [100, 102, 105]
    assert batch.keys == [b"k100", b"k102", b"k105"]
    assert batch.values == [values[0], values[2], values[5]]
    assert [(r.value, r.reason, r.partition, r.offset) for r in batch.rejected] == [
        (b"garbage{", "invalid_json", 2, 101),
        (b'{"n": 3}', "missing_field", 2, 103),
        (b'{"x": "three", "n": 3}', "wrong_type", 2, 104),
    ]
    for r in batch.rejected:
        assert r.step == "decode"
        assert r.topic == "t.events"
        assert r.key == f"k{r.offset}".encode()
        assert r.timestamp == 1_700_000_000_000 + (r.offset - 100)
        assert r.message  # a human-readable explanation
    assert offsets == {("t.events", 2): 106}


def test_commit_offset_includes_rejected_last_message():
    """The last message of a partition is bad: the commit offset must still move past it."""
    ms = msgs([b'{"x": 1, "n": 1}', b"bad"], start=7)
    batch, offsets = decode_messages(ms, SCHEMA)
    assert len(batch) == 1
    assert offsets == {("t.events", 0): 9}


def test_commit_offset_when_every_message_is_rejected():
    ms = msgs([b"bad", b"{}", None], start=40)
    batch, offsets = decode_messages(ms, SCHEMA)
    assert len(batch) == 0
    assert len(batch.rejected) == 3
    assert offsets == {("t.events", 0): 43}


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "no-schema"])
def test_tombstone_rejected_as_invalid_json(schema):
    ms = msgs([b'{"x": 1, "n": 1}', None, b'{"x": 2, "n": 2}'])
    batch, offsets = decode_messages(ms, schema)
    assert len(batch) == 2
    assert batch.offsets.tolist() == [100, 102]
    [r] = batch.rejected
    assert (r.value, r.reason, r.offset) == (None, "invalid_json", 101)
    assert offsets == {("t.events", 0): 103}


def test_no_schema_mode_parses_objects_into_dicts():
    ms = msgs([b'{"a": 1, "b": "x"}', b'{"a": 2, "c": [1, 2]}'])
    batch, _ = decode_messages(ms)
    assert batch.rows == [{"a": 1, "b": "x"}, {"a": 2, "c": [1, 2]}]
    assert batch.types == {}
    assert batch.rejected == []


@pytest.mark.parametrize("bad", [b"[1]", b"3", b'"str"', b"null", b"true", b"[]"])
def test_no_schema_mode_rejects_non_objects(bad):
    ms = msgs([b'{"a": 1}', bad, b'{"a": 3}'])
    batch, offsets = decode_messages(ms)
    assert batch.rows == [{"a": 1}, {"a": 3}]
    [r] = batch.rejected
    assert (r.value, r.offset) == (bad, 101)
    assert r.reason in {"wrong_type", "invalid_json"}
    assert offsets == {("t.events", 0): 103}


def test_no_schema_mode_invalid_json_reason():
    batch, _ = decode_messages(msgs([b"{not json"]))
    assert [r.reason for r in batch.rejected] == ["invalid_json"]


def test_multiple_partitions_and_topics():
    ms = [
        Msg(b'{"x": 1, "n": 1}', 10, 0, "a"),
        Msg(b'{"x": 2, "n": 2}', 5, 1, "a"),
        Msg(b"bad", 11, 0, "a"),
        Msg(b'{"x": 3, "n": 3}', 0, 0, "b"),
        Msg(b'{"x": 4, "n": 4}', 6, 1, "a"),
        Msg(b'{"n": 5}', 1, 0, "b"),
        Msg(b'{"x": 6, "n": 6}', 12, 0, "a"),
    ]
    batch, offsets = decode_messages(ms, SCHEMA)
    assert offsets == {("a", 0): 13, ("a", 1): 7, ("b", 0): 2}
    assert batch.column("x").tolist() == [1.0, 2.0, 3.0, 4.0, 6.0]
    assert batch.topics == ["a", "a", "b", "a", "a"]
    assert batch.partitions.tolist() == [0, 1, 0, 1, 0]
    assert batch.offsets.tolist() == [10, 5, 0, 6, 12]
    assert [(r.topic, r.partition, r.offset, r.reason) for r in batch.rejected] == [
        ("a", 0, 11, "invalid_json"), ("b", 0, 1, "missing_field")]


def test_empty_input():
    batch, offsets = decode_messages([], SCHEMA)
    assert len(batch) == 0
    assert offsets == {}
    assert batch.column("x").dtype == np.float64


def test_next_offsets_takes_max_per_partition():
    topics = ["a", "a", "a", "b"]
    out = next_offsets(topics, np.array([0, 0, 0, 3]), np.array([5, 9, 7, 0]))
    assert out == {("a", 0): 10, ("b", 3): 1}


def test_next_offsets_one_topic_many_messages_matches_the_per_message_rule():
    # >= 64 messages of one topic take the numpy path; offsets out of order within a partition
    rng = np.random.default_rng(7)
    parts = rng.integers(0, 5, 300)
    offs = rng.permutation(300) + 1000
    expect: dict = {}
    for p, o in zip(parts.tolist(), offs.tolist()):
        expect[("a", p)] = max(expect.get(("a", p), 0), o + 1)
    assert next_offsets(["a"] * 300, parts, offs) == expect


def test_json_nested_too_deeply_is_one_reject_not_a_crash():
    deep = b'{"x": 1, "n": 1, "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    batch, offsets = decode_messages(msgs([b'{"x": 1, "n": 1}', deep, b'{"x": 2, "n": 2}']), SCHEMA)
    assert batch.column("x").tolist() == [1.0, 2.0]
    assert [(r.offset, r.reason) for r in batch.rejected] == [(101, "invalid_json")]
    assert "nested too deeply" in batch.rejected[0].message
    assert offsets == {("t.events", 0): 103}


def test_record_headers_travel_with_their_rows_through_rejects_and_select():
    import numpy as np

    from tidal.stream.decode import decode_values
    from tidal.stream.schema import Schema

    values = [b'{"x": 1}', b'{"x": "bad"}', b'{"x": 3}']
    heads = [[("a", b"1")], [("b", b"2")], None]
    batch = decode_values(values, Schema.from_dict({"x": "int"}), headers=heads)
    assert [r.reason for r in batch.rejected] == ["wrong_type"]
    assert batch.headers == [[("a", b"1")], []]  # the bad row left with its header; none is []
    assert batch.select(np.array([False, True])).headers == [[]]
    assert decode_values([b'{"x": 1}']).headers == [[]]


def test_a_dead_letter_keeps_the_records_own_headers_first():
    from tidal.stream.decode import decode_values
    from tidal.stream.encode import dlq_headers
    from tidal.stream.schema import Schema

    batch = decode_values([b'{"x": "bad"}'], Schema.from_dict({"x": "int"}),
                          headers=[[("trace-id", b"t-1"), ("tidal.error.reason", b"old")]])
    [r] = batch.rejected
    names = [k for k, _v in dlq_headers(r, "p")]
    assert names[0] == "trace-id" and names.count("tidal.error.reason") == 1  # a replayed record's old reason goes
    assert dict(dlq_headers(r, "p"))["tidal.error.reason"] == b"wrong_type"
