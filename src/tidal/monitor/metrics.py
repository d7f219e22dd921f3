"""Prometheus metrics of a worker, recorded once per micro-batch, never once per event.

Every worker owns a :class:`WorkerMetrics` on its own ``CollectorRegistry`` (no global
state) and serves it on ``/metrics``. Per-event distributions (end-to-end latency, scores)
are added to their histograms a whole batch at a time with numpy (:class:`BatchHistogram`).

Names follow Prometheus conventions with a ``tidal_`` prefix; consumer lag is also exported
under kafka-lag-exporter's names (``kafka_consumergroup_group_lag``,
``kafka_consumergroup_group_lag_seconds``) so existing dashboards and alerts work.

>>> m = WorkerMetrics("fraud", "tidal.fraud")
>>> m.e2e_latency.observe_many(np.array([0.004, 0.02, 0.3]))
>>> m.registry.get_sample_value("tidal_end_to_end_latency_seconds_count", {"pipeline": "fraud"})
3.0
>>> m.registry.get_sample_value("tidal_end_to_end_latency_seconds_bucket", {"pipeline": "fraud", "le": "0.025"})
2.0
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["WorkerMetrics", "BatchHistogram", "serve_metrics", "LATENCY_BUCKETS"]

log = logging.getLogger("tidal.monitor")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCORE_BUCKETS = tuple(np.round(np.linspace(0.1, 1.0, 10), 2))
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)


class BatchHistogram:
    """A Prometheus histogram fed whole numpy arrays at once (one ``np.searchsorted`` per batch)."""

    def __init__(self, name: str, doc: str, labels: dict[str, str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.doc, self.labels = name, doc, dict(labels)
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics: value <= bound
        with self._lock:
            self.counts += np.bincount(idx, minlength=len(self.counts))
            self.total += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self.counts).astype(float).tolist()
            total = self.total
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        buckets = [(floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative)]
        buckets.append(("+Inf", cumulative[-1]))
        family.add_metric(list(self.labels.values()), buckets=buckets, sum_value=total)
        yield family


class WorkerMetrics:
    """All metrics of one worker of ``pipeline`` (consumer group ``group``)."""

    def __init__(self, pipeline: str, group: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline, self.group = pipeline, group
        r = self.registry = registry or CollectorRegistry()
        p = {"pipeline": pipeline}
        self.events_in = Counter("tidal_events_in", "Events consumed.", ["pipeline"], registry=r).labels(**p)
        self.events_out = Counter("tidal_events_out", "Output records produced.", ["pipeline"], registry=r).labels(**p)
        self.dlq = Counter("tidal_dlq", "Records sent to the dead-letter topic.", ["pipeline", "reason"], registry=r)
        self.batches = Counter("tidal_batches", "Micro-batches processed.", ["pipeline"], registry=r).labels(**p)
        self.commits = Counter("tidal_commits", "Offset commits (or transactions).", ["pipeline"], registry=r).labels(**p)
        self.rebalances = Counter("tidal_rebalances", "Partition assignments and revocations.", ["pipeline"],
                                  registry=r).labels(**p)
        self.produce_errors = Counter("tidal_produce_errors", "Records the broker did not acknowledge.",
                                      ["pipeline"], registry=r).labels(**p)
        self.batch_size = Histogram("tidal_batch_size", "Events per micro-batch.", ["pipeline"], buckets=BATCH_BUCKETS,
                                    registry=r).labels(**p)
        self.batch_seconds = Histogram("tidal_batch_duration_seconds", "Time to process and deliver one batch.",
                                       ["pipeline"], buckets=LATENCY_BUCKETS, registry=r).labels(**p)
        self.step_seconds = Histogram("tidal_step_duration_seconds", "Time one step takes on one batch.",
                                      ["pipeline", "step"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = BatchHistogram("tidal_end_to_end_latency_seconds",
                                          "Event timestamp to output acknowledged by the broker, per event.", p, LATENCY_BUCKETS, r)
        self.scores = BatchHistogram("tidal_prediction_score", "Model scores, per event.", p, SCORE_BUCKETS, r)
        self.predictions = Counter("tidal_predictions", "Predictions by model version and decision.",
                                   ["pipeline", "model", "version", "decision"], registry=r)
        self.model_info = Gauge("tidal_model_info", "1 for each model version that scored the latest batch.",
                                ["pipeline", "model", "version"], registry=r)
        self.lag = Gauge("tidal_consumer_lag", "Messages not yet processed, per partition.",
                         ["pipeline", "topic", "partition"], registry=r)
        self.kafka_lag = Gauge("kafka_consumergroup_group_lag", "Consumer group lag in messages (kafka-lag-exporter).",
                               ["group", "topic", "partition"], registry=r)
        self.kafka_lag_s = Gauge("kafka_consumergroup_group_lag_seconds",
                                 "Age of the oldest unprocessed message, estimated (kafka-lag-exporter).",
                                 ["group", "topic", "partition"], registry=r)
        self.state_entries = Gauge("tidal_state_entries", "Keys held in a state store by this worker.",
                                   ["pipeline", "state"], registry=r)
        self._versions: set[tuple[str, str]] = set()

    def observe_models(self, models: np.ndarray, versions: np.ndarray, decisions: np.ndarray | None) -> None:
        """Count predictions per (model, version, decision) of one batch; update the info metric."""
        seen = set()
        for model in set(models.tolist()):  # a handful of distinct values: loop over those, not rows
            of_model = models == model
            for version in set(versions[of_model].tolist()):
                rows = of_model & (versions == version)
                if decisions is None:
                    self.predictions.labels(self.pipeline, model, version, "none").inc(int(rows.sum()))
                else:
                    positive = int((rows & decisions).sum())
                    self.predictions.labels(self.pipeline, model, version, "true").inc(positive)
                    self.predictions.labels(self.pipeline, model, version, "false").inc(int(rows.sum()) - positive)
                seen.add((model, version))
        for model, version in self._versions - seen:
            self.model_info.remove(self.pipeline, model, version)
        for model, version in seen:
            self.model_info.labels(self.pipeline, model, version).set(1)
        self._versions = seen

    def set_lag(self, topic: str, partition: int, lag: int, lag_seconds: float) -> None:
        self.lag.labels(self.pipeline, topic, str(partition)).set(lag)
        self.kafka_lag.labels(self.group, topic, str(partition)).set(lag)
        self.kafka_lag_s.labels(self.group, topic, str(partition)).set(lag_seconds)

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge, first in ((self.lag, self.pipeline), (self.kafka_lag, self.group), (self.kafka_lag_s, self.group)):
            try:
                gauge.remove(first, topic, str(partition))
            except KeyError:
                pass


def serve_metrics(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> int | None:
    """Serve ``/metrics`` on ``port`` in a daemon thread; returns the port, or None if it was taken."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("metrics not served: port %s unavailable (%s); set --metrics-port", port, exc)
        return None
    return server.server_address[1]
