"""Where drift and learning steps send their events: a Kafka topic, a function, or both.

Events are JSON objects; drift alerts go to ``tidal.alerts`` keyed by their ``rule`` (the
shape :mod:`tidal.monitor.alerts` uses: ``rule``, ``state`` firing/resolved, ``severity``,
``pipeline``, ``model``, ``message``, ``time``), so ``tidal status`` and the dashboard show them.
They go out through the step's context (``ctx.emit``): the worker produces them with the
batch, inside its transaction in exactly-once mode.

>>> seen = []
>>> sink = EventSink(emit=seen.append)
>>> sink.send({"rule": "r", "state": "firing"}); [(e["rule"], e["state"], e["message"]) for e in seen]
[('r', 'firing', None)]
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import orjson

from tidal.broker.topics import ALERTS_TOPIC
from tidal.stream.context import ALERT_FIELDS

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
        self.ctx: Any = None

    def open(self, ctx: Any) -> None:
        """Send through the step's context (``ctx.emit``): the worker delivers the events."""
        self.ctx = ctx

    def send(self, event: dict[str, Any], key: str | None = None) -> None:
        for name in ALERT_FIELDS:  # the one alert shape
            event.setdefault(name, None)
        self.sent.append(event)
        del self.sent[:-1000]
        if self.emit is not None:
            self.emit(event)
        if self.ctx is not None:
            k = key if key is not None else str(event.get("rule") or event.get("type") or "")
            self.ctx.emit(self.topic, orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY), k)
