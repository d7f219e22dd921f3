"""Consumed Kafka messages → a :class:`~tidal.stream.batch.Batch`, in one pass per column.

With a schema, every value is parsed and type-checked by msgspec in C; records that are not
valid JSON, lack a required field or have a wrong type become rejects with a reason, and the
rest of the batch goes on. Without a schema, values are parsed with orjson into dicts.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Sequence

import msgspec
import numpy as np
import orjson

from tidal.stream.schema import Schema, classify
from tidal.stream.batch import Batch, Reject, record_headers

__all__ = ["decode_messages", "decode_values", "next_offsets"]

STEP = "decode"
_second = itemgetter(1)


def next_offsets(topics: Sequence[str], partitions: np.ndarray, offsets: np.ndarray) -> dict[tuple[str, int], int]:
    """The offset to commit per (topic, partition): one past the last (highest) message seen."""
    n = len(topics)
    if n >= 64 and topics.count(topics[0]) == n:  # one topic (the usual case): per partition in numpy
        t = topics[0]
        return {(t, q): int(offsets[partitions == q].max()) + 1 for q in np.unique(partitions).tolist()}
    out: dict[tuple[str, int], int] = {}
    for t, p, o in zip(topics, partitions.tolist(), offsets.tolist()):
        key = (t, p)
        if o >= out.get(key, -1):
            out[key] = o + 1
    return out


def decode_messages(msgs: Sequence[Any], schema: Schema | None = None) -> tuple[Batch, dict[tuple[str, int], int]]:
    """Decode ``confluent_kafka.Message`` objects (without errors) into a batch.

    Returns the batch (bad records already moved to ``batch.rejected``) and the offsets to
    commit once the batch is delivered: one past the last message per (topic, partition).
    """
    n = len(msgs)
    cls = type(msgs[0]) if n else None
    try:  # the class's own methods through map(): no per-message attribute lookup
        values = list(map(cls.value, msgs))
        keys, topics = list(map(cls.key, msgs)), list(map(cls.topic, msgs))
        partitions = np.fromiter(map(cls.partition, msgs), np.int32, n)
        offsets = np.fromiter(map(cls.offset, msgs), np.int64, n)
        timestamps = np.fromiter(map(_second, map(cls.timestamp, msgs)), np.int64, n)
    except (AttributeError, TypeError):  # empty, or messages of mixed classes
        values, keys, topics = [m.value() for m in msgs], [m.key() for m in msgs], [m.topic() for m in msgs]
        partitions = np.fromiter((m.partition() for m in msgs), np.int32, n)
        offsets = np.fromiter((m.offset() for m in msgs), np.int64, n)
        timestamps = np.fromiter((m.timestamp()[1] for m in msgs), np.int64, n)
    batch = Batch(
        values=values, keys=keys, topics=topics, partitions=partitions, offsets=offsets, timestamps=timestamps,
        rows=[],
        types={f.name: f.type for f in schema.fields} if schema else {},
        messages=msgs if isinstance(msgs, list) else list(msgs),
    )
    offsets = next_offsets(batch.topics, batch.partitions, batch.offsets)
    decode = schema.one_decoder.decode if schema else orjson.loads
    try:
        batch.rows = list(map(schema.one_decoder.raw if schema else decode, values))
        if schema is None and not all(type(r) is dict for r in batch.rows):
            raise msgspec.ValidationError("Expected `object`")
        return batch, offsets
    except (msgspec.DecodeError, msgspec.ValidationError, orjson.JSONDecodeError, TypeError, RecursionError):
        pass
    # Slow path, only for batches holding a bad record: find each one and say why.
    rows: list[Any] = []
    errors: list[tuple[str, str] | None] = []
    for v in values:
        try:
            if v is None:
                raise msgspec.DecodeError("JSON is malformed: empty message (tombstone)")
            row = decode(v)
            if schema is None and type(row) is not dict:
                raise msgspec.ValidationError(f"Expected `object`, got `{type(row).__name__}`")
            rows.append(row)
            errors.append(None)
        except (msgspec.DecodeError, msgspec.ValidationError, orjson.JSONDecodeError) as exc:
            err = classify(exc if not isinstance(exc, orjson.JSONDecodeError) else msgspec.DecodeError(str(exc)))
            rows.append(None)
            errors.append((err.reason, err.message))
    batch.rows = rows
    bad = np.fromiter((e is not None for e in errors), bool, n)
    kept = batch.select(~bad)
    kept.rejected.extend(
        Reject(values[i], batch.keys[i], batch.topics[i], int(batch.partitions[i]), int(batch.offsets[i]),
               int(batch.timestamps[i]), e[0], e[1], STEP, record_headers(msgs[i]))
        for i, e in enumerate(errors) if e is not None
    )
    return kept, offsets


def decode_values(values: Sequence[bytes | None], schema: Schema | None = None, topic: str = "memory",
                  headers: Sequence[Any] | None = None) -> Batch:
    """Decode raw values as if consumed in order from partition 0 of ``topic`` (tests, files,
    replays); ``headers[i]``: the Kafka headers of value *i* (a list of (name, bytes))."""
    heads = list(headers) if headers is not None else [None] * len(values)
    return decode_messages([_MemoryMessage(v, topic, i, h) for i, (v, h) in enumerate(zip(values, heads))], schema)[0]


class _MemoryMessage:
    """Duck-types ``confluent_kafka.Message`` for values that did not come from Kafka."""

    __slots__ = ("_value", "_topic", "_offset", "_headers")

    def __init__(self, value: bytes | None, topic: str, offset: int, headers: Any = None) -> None:
        self._value, self._topic, self._offset, self._headers = value, topic, offset, headers

    def headers(self) -> Any:
        return self._headers

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def error(self) -> None:
        return None
