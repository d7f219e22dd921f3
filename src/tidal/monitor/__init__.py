"""Monitoring: Prometheus metrics, consumer lag, alerts."""

from tidal.monitor.metrics import BatchHistogram, WorkerMetrics, serve_metrics

__all__ = ["BatchHistogram", "WorkerMetrics", "serve_metrics"]
