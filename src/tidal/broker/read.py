"""Read a small topic (control topics, profiles, demo outputs) from its start to its end."""

from __future__ import annotations

import time
from typing import Any, Mapping

from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidal.config import KafkaSettings

__all__ = ["read_topic", "read_partitions", "partitions_of"]


def _consumer(settings: KafkaSettings) -> Consumer:
    return Consumer(settings.client_config({"group.id": "tidal.status", "enable.auto.commit": False,
                                            "enable.partition.eof": True, "log_level": 3}))


def partitions_of(settings: KafkaSettings, topic: str, timeout: float = 5.0) -> list[int]:
    """The partition numbers of ``topic`` ([] if it does not exist)."""
    c = _consumer(settings)
    try:
        md = c.list_topics(topic, timeout=timeout).topics.get(topic)
        return [] if md is None or md.error is not None else sorted(md.partitions)
    finally:
        c.close()


def read_partitions(settings: KafkaSettings, starts: Mapping[tuple[str, int], int],
                    timeout: float = 10.0, strict: bool = True) -> list[Any]:
    """Every message of the given (topic, partition)s from their start offsets to their ends.

    Reads to partition EOF rather than to a reported high watermark (see docs/architecture.md: the
    embedded broker's ListOffsets can be short). If an end is not reached in ``timeout``,
    raises TimeoutError (``strict``) or returns what was read.
    """
    if not starts:
        return []
    c = _consumer(settings)
    try:
        c.assign([TopicPartition(t, p, max(0, o)) for (t, p), o in starts.items()])
        open_parts, out = set(starts), []
        deadline = time.monotonic() + timeout
        while open_parts:
            if time.monotonic() > deadline:
                if not strict:
                    break
                raise TimeoutError(f"could not read {sorted(open_parts)} to their end in {timeout}s")
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard((m.topic(), m.partition()))
                    continue
                out.append(m)
        return out
    finally:
        c.close()


def read_topic(settings: KafkaSettings, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every message of a (small, control) topic, read to each partition's end ([] if none)."""
    parts = partitions_of(settings, topic, timeout)
    return read_partitions(settings, {(topic, p): 0 for p in parts}, timeout, strict=False)
