"""Replay a topic from Kafka: read partitions from a start to an end offset, in batches.

Training replays history through the same decoder (and feature code) the live pipeline
uses, so training and serving features cannot drift apart. Reading stops at each
partition's end (``enable.partition.eof``), not at a reported high watermark.
"""

from __future__ import annotations

import time
from typing import Iterator, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidal.config import KafkaSettings
from tidal.stream.schema import Schema
from tidal.stream.batch import Batch
from tidal.stream.decode import decode_messages

__all__ = ["replay"]


def replay(settings: KafkaSettings, topic: str, schema: Schema | None = None,
           start: Mapping[int, int] | None = None, end: Mapping[int, int] | None = None,
           batch_size: int = 10_000, timeout: float = 10.0) -> Iterator[Batch]:
    """Decoded batches of ``topic`` from ``start`` (default: beginning) to ``end`` (default: now)."""
    for batch, _ in _read(settings, topic, start, end, batch_size, timeout, decode=True, schema=schema):
        yield batch


def _read(settings, topic, start, end, batch_size, timeout, decode, schema=None):
    conf = settings.client_config({"group.id": "tidal.replay", "enable.auto.commit": False,
                                   "enable.partition.eof": True, "log_level": 3})
    consumer = Consumer(conf)
    try:
        parts = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        first = {p: (start or {}).get(p, 0) for p in parts}
        open_parts = {p for p in parts if end is None or end.get(p, 0) > first[p]}
        position = dict(first)
        consumer.assign([TopicPartition(topic, p, first[p]) for p in parts if p in open_parts])
        stalled_since = time.monotonic()
        while open_parts:
            msgs = consumer.consume(batch_size, 0.2)  # returns early at partition ends (EOF events)
            if not msgs:
                if time.monotonic() - stalled_since > timeout:
                    raise TimeoutError(f"replay of {topic} stalled with partitions {sorted(open_parts)} unfinished")
                continue
            stalled_since = time.monotonic()
            keep = []
            for m in msgs:
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if end is None or position[p] >= end.get(p, 0):
                            open_parts.discard(p)
                        continue
                    raise KafkaException(err)
                if end is not None and m.offset() >= end.get(p, 0):
                    open_parts.discard(p)
                    continue
                position[p] = m.offset() + 1
                keep.append(m)
            if end is not None:
                open_parts = {p for p in open_parts if position[p] < end.get(p, 0)}
            if keep or not decode:
                yield (decode_messages(keep, schema)[0] if decode else None), dict(position)
    finally:
        consumer.close()
