"""Producers for code that writes to Kafka outside a pipeline (demo feeds, the registry's
publisher), and producing many records with backpressure. Steps never produce: they emit
through their context and the worker delivers (see ``docs/architecture.md``)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from confluent_kafka import Producer

from tidal.config import KafkaSettings

__all__ = ["make_producer", "produce_all"]


def make_producer(settings: KafkaSettings, conf: Mapping[str, Any] | None = None) -> Producer:
    """An idempotent producer on ``settings``' cluster (``conf``: more librdkafka settings)."""
    return Producer(settings.client_config({"enable.idempotence": True, "log_level": 3, **dict(conf or {})}))


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
