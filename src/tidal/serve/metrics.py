"""Prometheus metrics of one model server, on a registry of its own (never the global one).

>>> m = ServeMetrics()
>>> m.observe_request("toy", "1", rows=3, seconds=0.002)
>>> m.observe_call("toy", "1", rows=3)
>>> b"tidal_serve_request_duration_seconds_count" in m.render()[0]
True
>>> m.value("tidal_serve_model_calls_total", model_name="toy", model_version="1")
1.0
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["ServeMetrics"]

_LABELS = ["model_name", "model_version"]
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class ServeMetrics:
    """Request latency, rows, model calls and batch sizes per model version; errors by status."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram("tidal_serve_request_duration_seconds",
                                          "Time to answer one inference request in the data plane "
                                          "(inputs to outputs, batching wait included).",
                                          _LABELS, buckets=_SECONDS, registry=r)
        self.requests = Counter("tidal_serve_requests", "Inference requests answered.", _LABELS, registry=r)
        self.rows = Counter("tidal_serve_rows", "Rows scored (all requests).", _LABELS, registry=r)
        self.model_calls = Counter("tidal_serve_model_calls", "Model predict calls (one per adaptive batch).",
                                   _LABELS, registry=r)
        self.batch_rows = Histogram("tidal_serve_batch_rows", "Rows per model call.", _LABELS, buckets=_ROWS,
                                    registry=r)
        self.errors = Counter("tidal_serve_errors", "Requests answered with an error, by HTTP status.", ["status"],
                              registry=r)

    def observe_request(self, model: str, version: str, rows: int, seconds: float) -> None:
        self.request_duration.labels(model, version).observe(seconds)
        self.requests.labels(model, version).inc()
        self.rows.labels(model, version).inc(rows)

    def observe_call(self, model: str, version: str, rows: int) -> None:
        self.model_calls.labels(model, version).inc()
        self.batch_rows.labels(model, version).observe(rows)

    def observe_error(self, status: int) -> None:
        self.errors.labels(str(status)).inc()

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (0.0 if absent), e.g. for tests and benchmarks."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
