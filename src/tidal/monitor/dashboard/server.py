"""``tidal dashboard``: a web page with live charts of the pipelines, served by Starlette on uvicorn.

Two background threads feed it: one scrapes the workers' ``/metrics`` every ``interval`` seconds
(:class:`~tidal.monitor.dashboard.collector.MetricsHistory`), one asks Kafka for the consumer
groups, deployed models and active alerts every ``kafka_interval`` seconds
(:class:`~tidal.monitor.dashboard.collector.KafkaWatcher`). The page (``static/``, with uPlot
vendored: nothing is fetched from the internet) polls the JSON API and redraws itself.

Routes: ``GET /`` (the page, ``/?pipeline=NAME`` or ``/#pipeline=NAME`` for one pipeline),
``GET /api/summary[?pipeline=NAME&window=SECONDS]`` (everything the page shows, as JSON: one
pipeline's, by default the first by name; ``pipeline=*`` sums every pipeline's scoring workers),
``GET /healthz``, ``GET /metrics`` (the dashboard's own: targets up, Kafka reachable), ``/static/...``.

``auth="user:password"`` puts every route but ``/healthz`` behind HTTP Basic authentication
(browsers ask once, then send it with the page's own requests); ``metrics_token`` is sent as
``Authorization: Bearer <token>`` to workers that serve ``/metrics`` behind
``$TIDAL_METRICS_TOKEN``.

.. code-block:: python

    with Dashboard(["http://127.0.0.1:9400/metrics"], settings, port=0).start() as d:
        print(d.url)  # open it in a browser
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tidal.monitor.dashboard.collector import KafkaWatcher, MetricsHistory
from tidal.httpserver import HttpServer

__all__ = ["Dashboard", "BasicAuth", "create_app", "STATIC", "ALL"]

log = logging.getLogger("tidal.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
ALL = "*"  # ?pipeline=*: every pipeline's scoring workers, summed


class _OwnMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.up = Gauge("tidal_dashboard_target_up", "1 if the last scrape of this worker succeeded.", ["target"],
                        registry=self.registry)
        self.scrapes = Counter("tidal_dashboard_scrapes", "Scrapes of worker /metrics endpoints.",
                               ["target", "result"], registry=self.registry)
        self.kafka = Gauge("tidal_dashboard_kafka_reachable", "1 if the last cluster status succeeded.",
                           registry=self.registry)


class Dashboard(HttpServer):
    """Scrape ``targets`` and watch the cluster of ``settings`` (None: no Kafka); serve the page."""

    thread_name = "tidal-dashboard"
    graceful_s = 2.0

    def __init__(self, targets: list[str], settings: Any = None, *, host: str = "127.0.0.1", port: int = 8080,
                 interval: float = 1.0, history_s: float = 600.0, kafka_interval: float = 5.0,
                 log_level: str = "warning", auth: str | None = None, metrics_token: str | None = None) -> None:
        guard = BasicAuth.checked(auth) if auth else None  # a malformed USER:PASSWORD fails before anything starts
        self.interval = interval
        self.kafka_interval = kafka_interval
        self.history = MetricsHistory(targets, history_s=history_s, rate_window_s=max(5.0, 3 * interval),
                                      token=metrics_token)
        self.kafka = KafkaWatcher(settings, timeout=max(2.0, min(10.0, kafka_interval)))
        self.own = _OwnMetrics()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        app = create_app(self)
        super().__init__(BasicAuth(app, guard) if guard else app, host, port, log_level)

    # -- data ------------------------------------------------------------------------------
    def scrape_once(self) -> None:
        self.history.scrape()
        for t in self.history.targets:
            self.own.up.labels(t.url).set(1 if t.up else 0)
            self.own.scrapes.labels(t.url, "ok" if t.up else "error").inc()

    def _scrape_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.scrape_once()
            except Exception:  # noqa: BLE001 - keep the page alive whatever one scrape did
                log.exception("scrape failed")
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - t0)))

    def _kafka_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.kafka.poll()
            self.own.kafka.set(1 if self.kafka.view()["reachable"] else 0)
            self._stop.wait(max(0.1, self.kafka_interval - (time.monotonic() - t0)))

    def summary(self, pipeline: str | None = None, window_s: float | None = None) -> dict[str, Any]:
        """One pipeline's view: ``pipeline``, or (None) the first pipeline by name; ``ALL``: every
        pipeline's scoring workers summed."""
        default = pipeline is None
        if default:
            pipelines = self.history.pipelines()
            pipeline = pipelines[0] if pipelines else None
        elif pipeline == ALL:
            pipeline = None
        s = self.history.summary(pipeline, window_s)
        s["default_selected"] = default
        chosen = [pipeline] if pipeline else s["pipelines"]
        s["kafka"] = self.kafka.view(chosen, s["groups"], pipeline, s["monitor"]["groups"])
        s["now"] = time.time()
        s["interval_s"] = self.interval
        s["history_s"] = self.history.history_s
        return s

    # -- serving ---------------------------------------------------------------------------
    def _starting(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._scrape_loop, name="tidal-dashboard-scrape", daemon=True),
                         threading.Thread(target=self._kafka_loop, name="tidal-dashboard-kafka", daemon=True)]
        for t in self._threads:
            t.start()

    def _close(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 5.0  # a cluster_status under way ends within its timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.history.close()
        super()._close()


class BasicAuth:
    """ASGI middleware: HTTP Basic authentication against one ``user:password`` (compared in
    constant time); ``open_paths`` (the health check) stay open."""

    realm = "tidal dashboard"

    def __init__(self, app: Any, credentials: str, open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.app, self.open_paths = app, open_paths
        self._expected = b"Basic " + base64.b64encode(self.checked(credentials).encode())

    @staticmethod
    def checked(credentials: str) -> str:
        """``credentials`` if it is ``USER:PASSWORD`` with both parts non-empty, else ValueError."""
        user, colon, password = credentials.partition(":")
        if not colon or not user or not password:
            raise ValueError("dashboard auth must be USER:PASSWORD, both non-empty")
        return credentials

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in self.open_paths:
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await Response("authentication required\n", 401, media_type="text/plain", headers={
                    "WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"',
                    "Cache-Control": "no-store"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _json(data: Any, status: int = 200) -> Response:
    # orjson writes NaN/Infinity as null, which JSON.parse accepts
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def create_app(dashboard: Dashboard) -> Starlette:
    """The Starlette app of ``dashboard``: the page, its JSON API, health and own metrics."""

    def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    def summary(request: Request) -> Response:
        pipeline = request.query_params.get("pipeline") or None
        window = request.query_params.get("window")
        try:
            window_s = float(window) if window else None
        except ValueError:
            return _json({"error": f"window must be a number of seconds, got {window!r}"}, 400)
        return _json(dashboard.summary(pipeline, window_s))

    def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True, "scrapes": dashboard.history.scrapes,
                             "uptime_s": round(time.time() - dashboard.started_at, 1)})

    def metrics(_request: Request) -> Response:
        return Response(generate_latest(dashboard.own.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/", index),
        Route("/api/summary", summary),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ])
