"""Read a small topic (control topics, profiles, demo outputs) from its start to its end."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidal.config import KafkaSettings

__all__ = ["read_topic"]


def read_topic(settings: KafkaSettings, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every message of a (small, control) topic, read to each partition's end."""
    c = Consumer(settings.client_config({"group.id": "tidal.status", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "log_level": 3}))
    try:
        md = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None:
            return []
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        open_parts, out = set(md.partitions), []
        deadline = time.monotonic() + timeout
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(m.partition())
                    continue
                out.append(m)
        return out
    finally:
        c.close()
