"""What a step gets from the engine: its pipeline, cluster, metrics registry, store, and the
one way to write a side output (:meth:`StepContext.emit`, :meth:`StepContext.alert`).

Records a step emits are queued on the worker's :class:`SideOutputs` and produced with the
batch being processed (or, emitted between batches, as a batch of their own): inside its
transaction in exactly-once mode, acknowledged before its offsets are committed otherwise.

>>> out = SideOutputs()
>>> ctx = StepContext("fraud", step="drift", topics=("tidal.alerts",), sink=out)
>>> ctx.alert("data_drift", "data_drift:fraud", "firing", "3 of 8 features drifted", share=0.4)["severity"]
'warning'
>>> [(r.topic, r.key) for r in out.take()]
[('tidal.alerts', b'data_drift:fraud')]
>>> ctx.emit("elsewhere", b"x")
Traceback (most recent call last):
...
ValueError: step 'drift' did not declare side output 'elsewhere' (declared: ['tidal.alerts'])
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import orjson

__all__ = ["StepContext", "SideOutputs", "SideRecord", "alert_event", "ALERT_FIELDS", "SEVERITIES"]

#: Every alert on ``tidal.alerts`` has these fields (others are details of its type).
ALERT_FIELDS = ("type", "rule", "state", "severity", "pipeline", "model", "message", "time")
SEVERITIES = ("info", "warning", "critical")


class SideRecord(NamedTuple):
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None


class SideOutputs:
    """The records steps emitted and the worker has not produced yet (thread-safe, FIFO)."""

    def __init__(self) -> None:
        self._q: deque[SideRecord] = deque()
        self._lock = threading.Lock()

    def put(self, record: SideRecord) -> None:
        with self._lock:
            self._q.append(record)

    def take(self) -> list[SideRecord]:
        with self._lock:
            out = list(self._q)
            self._q.clear()
        return out

    def __len__(self) -> int:
        return len(self._q)


def alert_event(type: str, rule: str, state: str, message: str, *, pipeline: str, severity: str = "warning",
                model: str | None = None, time_s: float | None = None, **details: Any) -> dict[str, Any]:
    """The one alert shape: :data:`ALERT_FIELDS`, then the details of this alert type."""
    if state not in ("firing", "resolved"):
        raise ValueError(f"alert state {state!r}: use 'firing' or 'resolved'")
    if severity not in SEVERITIES:
        raise ValueError(f"alert severity {severity!r}: use one of {SEVERITIES}")
    event = {"type": type, "rule": rule, "state": state, "severity": severity, "pipeline": pipeline,
             "model": model, "message": message, "time": time.time() if time_s is None else time_s}
    event.update(details)
    return event


@dataclass
class StepContext:
    """The engine's side of one step: ``emit`` checks the topic against the declared side outputs."""

    pipeline: str
    step: str = "step"
    topics: tuple[str, ...] = ()
    sink: SideOutputs = field(default_factory=SideOutputs)
    settings: Any = None  # tidal.config.KafkaSettings of the cluster (None in Pipeline.test)
    registry: Any = None  # the worker's prometheus CollectorRegistry (None: no metrics)
    store: Any = None  # tidal.stream.state.StateStore when the step declares state_name
    alerts_topic: str = "tidal.alerts"

    def emit(self, topic: str, value: bytes | Mapping[str, Any], key: bytes | str | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record for ``topic`` (a declared side output); dicts are written as JSON."""
        if topic not in self.topics:
            raise ValueError(f"step {self.step!r} did not declare side output {topic!r} "
                             f"(declared: {sorted(self.topics)})")
        if not isinstance(value, (bytes, bytearray)):
            value = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        self.sink.put(SideRecord(topic, bytes(value), key.encode() if isinstance(key, str) else key, headers))

    def alert(self, type: str, rule: str, state: str, message: str, severity: str = "warning",
              model: str | None = None, topic: str | None = None, **details: Any) -> dict[str, Any]:
        """Emit one alert (the :func:`alert_event` shape) to ``tidal.alerts`` (or ``topic``), keyed by its rule."""
        event = alert_event(type, rule, state, message, pipeline=self.pipeline, severity=severity, model=model,
                            **details)
        self.emit(topic or self.alerts_topic, event, rule)
        return event
