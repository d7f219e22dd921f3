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

import hmac
import logging
import os
import threading

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.stream.histogram import BatchHistogram

__all__ = ["WorkerMetrics", "BatchHistogram", "serve_metrics", "LATENCY_BUCKETS"]  # BatchHistogram: re-exported

log = logging.getLogger("tidal.monitor")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000)


class WorkerMetrics:
    """All metrics of one worker of ``pipeline`` (consumer group ``group``)."""

    def __init__(self, pipeline: str, group: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline, self.group = pipeline, group
        r = self.registry = registry or CollectorRegistry()
        from tidal.broker.skipped import SKIPPED

        if registry is None:  # records of tidal topics this process skipped (status, tables, followers)
            r.register(SKIPPED)
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
        self.lag = Gauge("tidal_consumer_lag", "Messages not yet processed, per partition.",
                         ["pipeline", "topic", "partition"], registry=r)
        self.kafka_lag = Gauge("kafka_consumergroup_group_lag", "Consumer group lag in messages (kafka-lag-exporter).",
                               ["group", "topic", "partition"], registry=r)
        self.kafka_lag_s = Gauge("kafka_consumergroup_group_lag_seconds",
                                 "Age of the oldest unprocessed message, estimated (kafka-lag-exporter).",
                                 ["group", "topic", "partition"], registry=r)
        self.stalled = Gauge("tidal_partition_stalled_seconds",
                             "How long a partition has been behind with its position not moving (0: moving or "
                             "caught up; paused while its state is restored does not count).",
                             ["pipeline", "topic", "partition"], registry=r)
        self.state_entries = Gauge("tidal_state_entries", "Keys held in a state store by this worker.",
                                   ["pipeline", "state"], registry=r)
        self.state_restored = Counter("tidal_state_restored_records", "Changelog records applied restoring state.",
                                      ["pipeline", "state"], registry=r)
        self.state_restore_remaining = Gauge("tidal_state_restore_remaining_records",
                                             "Changelog records left to read by the restore under way (0: none).",
                                             ["pipeline", "state"], registry=r)
        self.state_restores = Counter("tidal_state_restored_partitions",
                                      "Partitions restored: warm (the changelog's tail onto a local checkpoint) "
                                      "or cold (the whole changelog).", ["pipeline", "state", "mode"], registry=r)

    def set_lag(self, topic: str, partition: int, lag: int, lag_seconds: float) -> None:
        self.lag.labels(self.pipeline, topic, str(partition)).set(lag)
        self.kafka_lag.labels(self.group, topic, str(partition)).set(lag)
        self.kafka_lag_s.labels(self.group, topic, str(partition)).set(lag_seconds)

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge, first in ((self.lag, self.pipeline), (self.kafka_lag, self.group), (self.kafka_lag_s, self.group),
                             (self.stalled, self.pipeline)):
            try:
                gauge.remove(first, topic, str(partition))
            except KeyError:
                pass


def metrics_host() -> str:
    """Where ``/metrics`` listens: ``$TIDAL_METRICS_HOST``, default 127.0.0.1 (loopback only;
    ``0.0.0.0`` in a container, where the platform's network policy decides who scrapes)."""
    return os.environ.get("TIDAL_METRICS_HOST", "127.0.0.1")


def metrics_token() -> str | None:
    """``$TIDAL_METRICS_TOKEN``: when set, every ``/metrics`` asks for ``Authorization: Bearer <it>``."""
    return os.environ.get("TIDAL_METRICS_TOKEN") or None


def serve_metrics(registry: CollectorRegistry, port: int, addr: str | None = None,
                  token: str | None = None, health: Any = None) -> int | None:
    """Serve ``/metrics`` on ``port`` in a daemon thread; returns the port, or None if it was taken.

    ``token`` (default ``$TIDAL_METRICS_TOKEN``): requests without ``Authorization: Bearer <token>``
    get a 401 (Prometheus: ``authorization: {credentials: ...}`` in the scrape config).
    ``health()`` → ``{"live": bool, "ready": bool}`` answers ``/health/live`` and ``/health/ready``
    (200 or 503, with that JSON; never behind the token, for the platform's probes)."""
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    addr = addr or metrics_host()
    token = token if token is not None else metrics_token()
    app = make_wsgi_app(registry)
    if token:
        app = _bearer(app, token)
    if health is not None:
        app = _probes(app, health)

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:  # no line per scrape on stderr
            pass

    try:
        server = make_server(addr, port, app, Server, handler_class=Quiet)
    except OSError as exc:
        log.warning("metrics not served: port %s unavailable (%s); set --metrics-port", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="tidal-metrics", daemon=True).start()
    return server.server_address[1]


def _probes(app, health):
    """``/health/live`` and ``/health/ready`` from ``health()``; everything else to ``app``."""
    import json

    def probed(environ, start_response):
        which = {"/health/live": "live", "/health/ready": "ready"}.get(environ.get("PATH_INFO", ""))
        if which is None:
            return app(environ, start_response)
        try:
            state = dict(health())
        except Exception as exc:  # noqa: BLE001 - a probe answers, it does not crash the server
            state = {"live": False, "ready": False, "error": str(exc)[:200]}
        start_response("200 OK" if state.get(which) else "503 Service Unavailable",
                       [("Content-Type", "application/json")])
        return [json.dumps(state).encode()]

    return probed


def _bearer(app, token: str):
    """``app`` behind a bearer token, compared in constant time."""
    want = f"Bearer {token}".encode()

    def guarded(environ, start_response):
        got = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(got, want):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"401: /metrics needs Authorization: Bearer <TIDAL_METRICS_TOKEN>\n"]
        return app(environ, start_response)

    return guarded
