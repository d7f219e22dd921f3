"""Where drift and learning steps send their events: a Kafka topic, a function, or both.

Events are JSON objects; drift alerts go to ``tidal.alerts`` keyed by their ``rule`` (the
shape :mod:`tidal.monitor.alerts` uses: ``rule``, ``state`` firing/resolved, ``severity``,
``pipeline``, ``model``, ``message``, ``time``), so ``tidal status`` and the dashboard show them.
They go out on the step's own producer, outside any transaction of the batch.

>>> seen = []
>>> sink = EventSink(emit=seen.append)
>>> sink.send({"rule": "r", "state": "firing"}); seen
[{'rule': 'r', 'state': 'firing'}]
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import orjson

from tidal.broker.topics import ALERTS_TOPIC

__all__ = ["EventSink"]

log = logging.getLogger("tidal.drift")


class EventSink:
    """``send(event)``: to ``topic`` once :meth:`open` gave it a cluster, and to ``emit`` if set."""

    def __init__(self, topic: str = ALERTS_TOPIC, emit: Callable[[dict[str, Any]], None] | None = None,
                 partitions: int = 1) -> None:
        self.topic = topic
        self.emit = emit
        self.partitions = partitions
        self.sent: list[dict[str, Any]] = []  # the most recent events, for tests and demos
        self._producer: Any = None

    def open(self, settings: Any) -> None:
        from confluent_kafka import Producer

        from tidal.broker.topics import TopicSpec, ensure_topics

        ensure_topics(settings, [TopicSpec(self.topic, self.partitions)])
        self._producer = Producer(settings.client_config({"enable.idempotence": True, "linger.ms": 5,
                                                          "log_level": 3}))

    def send(self, event: dict[str, Any], key: str | None = None) -> None:
        self.sent.append(event)
        del self.sent[:-1000]
        if self.emit is not None:
            self.emit(event)
        if self._producer is not None:
            k = key if key is not None else str(event.get("rule") or event.get("type") or "")
            self._producer.produce(self.topic, orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY), k.encode())
            self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> None:
        if self._producer is not None and self._producer.flush(timeout):
            log.warning("%s: some events were not acknowledged within %.0fs", self.topic, timeout)
