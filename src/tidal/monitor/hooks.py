"""The monitor's worker hooks: Prometheus metrics and alert rules for every worker.

Registered as the ``tidal.worker_hooks`` entry point, so ``Worker`` uses them by default.

>>> from tidal.stream.pipeline import Pipeline
>>> hooks = MonitorHooks(Pipeline("fraud"))
>>> hooks.committed(); hooks.registry.get_sample_value("tidal_commits_total", {"pipeline": "fraud"})
1.0
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from tidal.broker.topics import ALERTS_TOPIC
from tidal.monitor.alerts import AlertEvaluator, AlertRule
from tidal.monitor.metrics import WorkerMetrics, serve_metrics
from tidal.stream.batch import Batch
from tidal.stream.hooks import WorkerHooks
from tidal.stream.pipeline import Pipeline

__all__ = ["MonitorHooks"]


class MonitorHooks(WorkerHooks):
    """:class:`WorkerMetrics` on the worker's registry, and the pipeline's ``alerts`` rules."""

    def __init__(self, pipeline: Pipeline, metrics: WorkerMetrics | None = None) -> None:
        self.pipeline = pipeline.name
        self.metrics = metrics or WorkerMetrics(pipeline.name, pipeline.group)
        self.registry = self.metrics.registry
        self.rules = [r if isinstance(r, AlertRule) else AlertRule.from_dict(r) for r in pipeline.alerts]
        self.alerts: AlertEvaluator | None = None
        self._alerts_at = 0.0

    def started(self, pipeline: Pipeline, emit_alert: Callable[[dict[str, Any]], None]) -> None:
        self.alerts = AlertEvaluator(self.rules, self.registry, pipeline.name, emit_alert)

    def serve(self, port: int, health: Callable[[], dict[str, bool]] | None = None) -> int | None:
        return serve_metrics(self.registry, port, health=health)

    def alert_topics(self) -> tuple[str, ...]:
        return (ALERTS_TOPIC,) if self.rules else ()

    def batch(self, batch: Batch, n_in: int, n_out: int, seconds: float) -> None:
        m = self.metrics
        m.events_in.inc(n_in)
        m.events_out.inc(n_out)
        m.batches.inc()
        m.batch_size.observe(n_in)
        m.batch_seconds.observe(seconds)
        for reason, count in Counter(r.reason for r in batch.rejected).items():
            m.dlq.labels(self.pipeline, reason).inc(count)
        if len(batch):
            m.e2e_latency.observe_many((time.time() * 1000 - batch.timestamps) / 1000)

    def step_seconds(self, step: str, seconds: float) -> None:
        self.metrics.step_seconds.labels(self.pipeline, step).observe(seconds)

    def produce_error(self) -> None:
        self.metrics.produce_errors.inc()

    def committed(self) -> None:
        self.metrics.commits.inc()

    def rebalanced(self) -> None:
        self.metrics.rebalances.inc()

    def revoked(self, topic: str, partition: int) -> None:
        self.metrics.forget_partition(topic, partition)

    def lag(self, topic: str, partition: int, messages: int, seconds: float) -> None:
        self.metrics.set_lag(topic, partition, messages, seconds)

    def stalled(self, topic: str, partition: int, seconds: float) -> None:
        self.metrics.stalled.labels(self.pipeline, topic, str(partition)).set(seconds)

    def state_size(self, store: str, entries: int) -> None:
        self.metrics.state_entries.labels(self.pipeline, store).set(entries)

    def state_restore(self, store: str, records: int, remaining: int) -> None:
        m = self.metrics
        m.state_restored.labels(self.pipeline, store).inc(records)
        m.state_restore_remaining.labels(self.pipeline, store).set(remaining)

    def state_restored(self, store: str, warm: int, cold: int) -> None:
        m = self.metrics
        m.state_restores.labels(self.pipeline, store, "warm").inc(warm)
        m.state_restores.labels(self.pipeline, store, "cold").inc(cold)

    def tick(self, now: float) -> None:
        if self.alerts is not None and self.alerts.rules and now - self._alerts_at >= 1.0:
            self._alerts_at = now
            self.alerts.evaluate()
