"""Monitoring: Prometheus metrics, consumer lag, alerts."""

from tidal.monitor.alerts import AlertEvaluator, AlertRule
from tidal.monitor.metrics import BatchHistogram, WorkerMetrics, serve_metrics

__all__ = ["AlertEvaluator", "AlertRule", "BatchHistogram", "WorkerMetrics", "serve_metrics"]
