"""Prometheus metrics of a connector, on its own registry (served on ``/metrics``).

>>> m = ConnectorMetrics("orders", "postgres", "source")
>>> m.records.inc(3)
>>> m.registry.get_sample_value("tidal_connector_records_total",
...     {"connector": "orders", "connector_type": "postgres", "direction": "source"})
3.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.monitor.metrics import LATENCY_BUCKETS

__all__ = ["ConnectorMetrics"]


class ConnectorMetrics:
    """Counts a connector's records, dead letters, errors and whether its system is up."""

    def __init__(self, connector: str, kind: str, direction: str,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"connector": connector, "connector_type": kind, "direction": direction}
        names = list(labels)
        r = self.registry
        self.records = Counter("tidal_connector_records", "Records moved (source: produced to Kafka; "
                               "sink: written out).", names, registry=r).labels(**labels)
        self._dlq = Counter("tidal_connector_dlq", "Records sent to the dead-letter topic, by reason.",
                            names + ["reason"], registry=r)
        self._errors = Counter("tidal_connector_errors", "Errors by kind (unavailable: the outside "
                               "system is down; delivery: Kafka did not acknowledge).", names + ["kind"], registry=r)
        self.up = Gauge("tidal_connector_up", "1 while the outside system answers, else 0.", names,
                        registry=r).labels(**labels)
        self.batch_seconds = Histogram("tidal_connector_batch_seconds", "Time to move one batch.", names,
                                       buckets=LATENCY_BUCKETS, registry=r).labels(**labels)
        self.last_success = Gauge("tidal_connector_last_success_timestamp_seconds",
                                  "When a batch last went through (unix time).", names, registry=r).labels(**labels)
        self._labels = labels

    def dlq(self, reason: str, n: int = 1) -> None:
        self._dlq.labels(**self._labels, reason=reason).inc(n)

    def error(self, kind: str) -> None:
        self._errors.labels(**self._labels, kind=kind).inc()
