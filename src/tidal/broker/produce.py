"""Produce many records with backpressure: wait for room when librdkafka's queue is full."""

from __future__ import annotations

from typing import Iterable

from confluent_kafka import Producer

__all__ = ["produce_all"]


def produce_all(producer: Producer, topic: str, values: Iterable[bytes | None],
                keys: Iterable[bytes | None] | None = None, partition: int | None = None) -> int:
    """Queue every value (with its key) on ``producer``; returns how many. Does not flush."""
    produce, poll = producer.produce, producer.poll
    n = 0
    pairs = zip(values, keys) if keys is not None else ((v, None) for v in values)
    for value, key in pairs:
        while True:
            try:
                if partition is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, partition)
                break
            except BufferError:  # queue full: let deliveries drain, then retry this record
                poll(0.05)
        n += 1
    poll(0)
    return n
