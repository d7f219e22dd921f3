"""HTTP ingest: ``POST /ingest/{pipeline}`` validates records against the pipeline's schema
and answers only after Kafka acknowledged every one of them.

This connector is *pushed* to, so it does not use :class:`~tidal.connect.source_runner.SourceRunner`
(which polls a source and keeps positions): a client that got a 2xx knows its records are in
``<pipeline>.events``; one that got anything else should send them again. It shares the
connector metrics (:class:`~tidal.connect.metrics.ConnectorMetrics`, ``kind="http"``).

Routes:

- ``POST /ingest/{pipeline}``: one JSON object, a JSON array of objects, or JSON Lines
  (``Content-Type: application/x-ndjson``). All or nothing: when any record does not fit the
  schema the answer is 422 ``{"error", "errors": [{"index", "reason", "message"}]}`` and
  *nothing* of the request is produced (the client hears about bad data and resends a fixed
  batch without duplicating the good part). Else 200 ``{"accepted": n, "topic", "offsets":
  [[partition, offset], ...]}`` once the broker acknowledged all ``n`` (idempotent producer,
  ``acks=all``).
- 429 with ``Retry-After`` when more than ``max_in_flight`` records would be waiting for
  acknowledgement or librdkafka's queue is full; 503 when Kafka is unreachable or did not
  acknowledge within ``timeout_s`` (some records of that request may have been written: a
  retry is at-least-once); 400 malformed body, 404 unknown pipeline, 413 body too large.
- ``GET /health/live`` (200), ``GET /health/ready`` (200 when the broker answers, else 503;
  empty bodies), ``GET /metrics``.

.. code-block:: python

    pipe = load_ingest_pipeline("fraud.yaml", key_field="card_id")
    with IngestServer([pipe], settings, port=8088).start() as server:
        httpx.post(f"{server.url}/ingest/fraud", json=[{"amount": 3.5, "card_id": "c1"}])
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import msgspec
import orjson
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.config import KafkaSettings
from tidal.connect.metrics import ConnectorMetrics
from tidal.quality.schema import Schema
from tidal.httpserver import HttpServer

UNKNOWN = "(unknown)"  # the pipeline label of requests for names this server does not take

__all__ = ["IngestPipeline", "IngestServer", "IngestError", "load_ingest_pipeline", "validate", "split_body"]

log = logging.getLogger("tidal.connect.http")

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


class IngestError(Exception):
    """An answer other than 200: its HTTP status, message and (422) per-record errors."""

    def __init__(self, status: int, message: str, errors: list[dict] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors, self.retry_after = status, message, errors, retry_after


@dataclass
class IngestPipeline:
    """What ``POST /ingest/{name}`` needs from a pipeline: its topic, schema and key field."""

    name: str
    topic: str
    schema: Schema | None = None
    partitions: int = 4
    key_field: str | None = None

    def __post_init__(self) -> None:
        if self.key_field and self.schema is not None and self.key_field not in self.schema.names:
            raise ValueError(f"pipeline {self.name}: key field {self.key_field!r} is not in its schema "
                             f"{self.schema.names}")


def load_ingest_pipeline(path: str | Path, key_field: str | None = None) -> IngestPipeline:
    """The name, source topic, schema and partitions of a pipeline YAML (its steps are not built).

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.yaml"
    >>> _ = f.write_text("pipeline: fraud\\nschema: {amount: float}\\nsteps: [{score: {model: m}}]\\n")
    >>> p = load_ingest_pipeline(f); p.name, p.topic, p.schema.names
    ('fraud', 'fraud.events', ['amount'])
    """
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    name = spec.get("pipeline") or spec.get("name")
    if not name:
        raise ValueError(f"{path}: a pipeline needs a name: `pipeline: <name>`")
    sources = spec.get("sources") or spec.get("source") or [f"{name}.events"]
    topic = sources if isinstance(sources, str) else sources[0]
    schema = Schema.from_dict(spec["schema"]) if spec.get("schema") else None
    return IngestPipeline(name, topic, schema, int(spec.get("partitions", 4)), key_field)


def split_body(body: bytes, ndjson: bool) -> list[bytes]:
    """The records of a request body: one object, a JSON array, or JSON Lines.

    >>> split_body(b'[{"a": 1}, {"a": 2}]', False), split_body(b'{"a":1}\\n\\n{"a":2}\\n', True)
    ([b'{"a": 1}', b'{"a": 2}'], [b'{"a":1}', b'{"a":2}'])
    """
    if ndjson:
        return [line for line in (ln.strip() for ln in body.split(b"\n")) if line]
    head = body.lstrip()[:1]
    if head == b"[":
        try:
            return [bytes(r) for r in _RAW_LIST.decode(body)]
        except msgspec.DecodeError as exc:
            raise IngestError(400, f"body is not a valid JSON array: {exc}") from None
    if head == b"{":
        return [body.strip()]
    raise IngestError(400, "body must be a JSON object, a JSON array of objects, or JSON Lines "
                           "(Content-Type: application/x-ndjson)")


def validate(pipeline: IngestPipeline, values: list[bytes]) -> tuple[list[Any], list[dict]]:
    """Decode ``values`` with the pipeline's schema (types, then its reject rules).

    Returns the decoded rows (in order) and the errors ``[{"index", "reason", "message"}]``.

    >>> p = IngestPipeline("t", "t.events", Schema.from_dict({"x": {"type": "float", "min": 0}}))
    >>> validate(p, [b'{"x": 1}', b'{"x": -1}', b'{"y": 2}'])[1]  # doctest: +NORMALIZE_WHITESPACE
    [{'index': 1, 'reason': 'out_of_range', 'message': 'x: -1 < min 0'},
     {'index': 2, 'reason': 'missing_field', 'message': 'Object missing required field `x`'}]
    """
    from tidal.stream.decode import decode_values

    batch = decode_values(values, pipeline.schema, pipeline.topic)
    if pipeline.schema is not None and pipeline.schema.has_rules and len(batch):
        from tidal.quality.rules import ValidateStep

        batch = ValidateStep(pipeline.schema, flags=False).process(batch)
    errors = sorted(({"index": int(r.offset), "reason": r.reason, "message": r.message} for r in batch.rejected),
                    key=lambda e: e["index"])
    return batch.rows, errors


class IngestMetrics:
    """Requests by status, records accepted / rejected, request latency; plus the connector metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.connector = ConnectorMetrics("http-ingest", "http", "source", registry=r)
        self.requests = Counter("tidal_ingest_requests", "Ingest requests answered, by pipeline and HTTP status.",
                                ["pipeline", "status"], registry=r)
        self.records = Counter("tidal_ingest_records", "Records accepted (acknowledged by Kafka) or rejected "
                               "(422), by pipeline.", ["pipeline", "outcome"], registry=r)
        self.duration = Histogram("tidal_ingest_request_duration_seconds", "Time to answer one ingest request "
                                  "(body read, validation, produce until acknowledged).", ["pipeline"],
                                  buckets=_SECONDS, registry=r)
        self.in_flight = Gauge("tidal_ingest_in_flight_records", "Records produced and not yet acknowledged.",
                               registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Request:
    """Delivery state of one request's records; resolved on the event loop when all are acknowledged."""

    __slots__ = ("loop", "future", "left", "offsets", "errors")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop, self.future, self.left = loop, loop.create_future(), n
        self.offsets: list[Any] = [None] * n
        self.errors: list[KafkaError] = []

    def delivered(self, i: int, err: KafkaError | None, msg: Any) -> None:  # the poll thread
        if err is not None:
            self.errors.append(err)
        else:
            self.offsets[i] = (msg.partition(), msg.offset())
        self.left -= 1
        if self.left == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaGate:
    """An idempotent producer, its poll thread, and a probe that says whether Kafka answers."""

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 10.0, max_in_flight: int = 100_000,
                 producer_config: dict[str, Any] | None = None, probe_s: float = 2.0) -> None:
        self.settings, self.timeout_s, self.max_in_flight, self.probe_s = settings, timeout_s, max_in_flight, probe_s
        self.ready = False
        self.reason = "not checked yet"
        self.in_flight = 0  # changed on the event loop only
        self._stop = threading.Event()
        self._wake = threading.Event()
        conf = settings.client_config({
            "enable.idempotence": True, "acks": "all", "linger.ms": 2, "compression.type": "lz4",
            "message.timeout.ms": int(timeout_s * 1000), "queue.buffering.max.messages": max(max_in_flight * 2, 1000),
            "client.id": "tidal-ingest-http", "log_level": 3, "error_cb": self._error, **(producer_config or {})})
        self.producer = Producer(conf)
        self.record_limit = max(1024, int(conf.get("message.max.bytes", 1_000_000)) - 16 * 1024)
        self._threads = [threading.Thread(target=self._poll, name="tidal-ingest-poll", daemon=True),
                         threading.Thread(target=self._probe, name="tidal-ingest-probe", daemon=True)]

    def start(self, topics: Sequence[tuple[str, int]]) -> None:
        self._topics = list(topics)
        for t in self._threads:
            t.start()

    def _error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) or err.fatal():
            self.ready, self.reason = False, f"Kafka at {self.settings.bootstrap} is unreachable: {err.str()}"
            self._wake.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def _probe(self) -> None:
        from tidal.broker.topics import TopicSpec, ensure_topics

        made = False
        while not self._stop.is_set():
            try:
                if not made:
                    ensure_topics(self.settings, [TopicSpec(t, p) for t, p in self._topics], timeout=self.probe_s * 2)
                    made = True
                self.producer.list_topics(timeout=self.probe_s)
                if not self.ready:
                    log.info("Kafka at %s is reachable", self.settings.bootstrap)
                self.ready, self.reason = True, ""
            except KafkaException as exc:
                if self.ready or self.reason == "not checked yet":
                    log.warning("Kafka at %s is unreachable: %s", self.settings.bootstrap, exc)
                self.ready, self.reason = False, f"Kafka at {self.settings.bootstrap} is unreachable: {exc.args[0]}"
            self._wake.wait(self.probe_s if self.ready else self.probe_s / 2)
            self._wake.clear()

    async def produce(self, topic: str, values: list[bytes], keys: list[bytes | None] | None) -> list[Any]:
        """Produce ``values`` and wait until every one is acknowledged: their (partition, offset)."""
        if not self.ready:
            raise IngestError(503, self.reason or "Kafka is not reachable", retry_after=max(1.0, self.probe_s))
        n = len(values)
        if n > self.max_in_flight:
            raise IngestError(413, f"{n} records in one request; this server takes at most {self.max_in_flight}")
        big = [i for i, v in enumerate(values) if len(v) > self.record_limit]
        if big:  # refused before anything is produced: the request is all or nothing
            raise IngestError(413, f"record {big[0]} is {len(values[big[0]]):,} bytes; Kafka takes at most "
                                   f"{self.record_limit:,} per record (message.max.bytes)")
        if self.in_flight + n > self.max_in_flight:
            raise IngestError(429, f"{self.in_flight} records are waiting for Kafka's acknowledgement "
                                   f"(limit {self.max_in_flight}); retry later", retry_after=1.0)
        req = _Request(asyncio.get_running_loop(), n)
        self.in_flight += n
        try:
            produce, done = self.producer.produce, req.delivered
            deadline = time.monotonic() + self.timeout_s
            i = 0
            while i < n:
                try:
                    produce(topic, values[i], keys[i] if keys else None,
                            on_delivery=lambda err, msg, i=i: done(i, err, msg))
                    i += 1
                except BufferError:
                    if i == 0:  # nothing of this request is queued yet: tell the client to slow down
                        raise IngestError(429, "the producer queue is full; retry later", retry_after=1.0) from None
                    if time.monotonic() > deadline:  # part is queued: it will be delivered, say so
                        raise IngestError(503, f"the producer queue stayed full; {i} of {n} records were queued "
                                               "and may be written") from None
                    await asyncio.sleep(0.005)
            await req.future
        finally:
            self.in_flight -= n
        if req.errors:
            err = req.errors[0]
            ok = sum(o is not None for o in req.offsets)
            status = 503 if err.retriable() or err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT,
                                                              KafkaError._ALL_BROKERS_DOWN) else 500
            raise IngestError(status, f"Kafka did not acknowledge {len(req.errors)} of {n} records ({ok} were "
                                      f"written): {err.str()}", retry_after=1.0 if status == 503 else None)
        return req.offsets

    def close(self) -> None:
        self.producer.flush(self.timeout_s)
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join(self.probe_s * 3)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers=headers, media_type="application/json")


def create_ingest_app(pipelines: Sequence[IngestPipeline], gate: KafkaGate, metrics: IngestMetrics, *,
                      max_body_bytes: int = 16 * 1024 * 1024, token: str | None = None) -> Starlette:
    """The Starlette app over ``pipelines`` producing through ``gate``; ``token`` requires
    ``Authorization: Bearer <token>`` on ``/ingest`` and ``/metrics`` (health routes stay open)."""
    by_name = {p.name: p for p in pipelines}
    cm = metrics.connector
    want = f"Bearer {token}".encode() if token else None

    def authorised(request: Request) -> bool:
        return want is None or hmac.compare_digest(request.headers.get("authorization", "").encode(), want)

    def answer(pipe: str, status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
        metrics.requests.labels(pipe, str(status)).inc()
        return _json(content, status, headers)

    async def ingest(request: Request) -> Response:
        t0 = time.perf_counter()
        name = request.path_params["pipeline"]
        pipe = by_name.get(name)
        if not authorised(request):
            return answer(name if pipe else UNKNOWN, 401, {"error": "missing or wrong bearer token"},
                          {"WWW-Authenticate": "Bearer"})
        if pipe is None:  # one label value for every unknown name: a URL cannot grow the metric series
            return answer(UNKNOWN, 404, {"error": f"unknown pipeline {name[:200]!r}; this server takes "
                                                  f"{sorted(by_name)}"})
        try:
            body = await _body(request, max_body_bytes)
            ndjson = "ndjson" in request.headers.get("content-type", "") or \
                     "jsonl" in request.headers.get("content-type", "")
            values = split_body(body, ndjson)
            if not values:
                raise IngestError(400, "no records in the body")
            rows, errors = validate(pipe, values)
            if errors:
                metrics.records.labels(name, "rejected").inc(len(errors))
                raise IngestError(422, f"{len(errors)} of {len(values)} records do not fit the schema of "
                                       f"{name}; nothing was written", errors)
            keys = _keys(pipe, rows, values) if pipe.key_field else None
            metrics.in_flight.inc(len(values))
            p0 = time.perf_counter()
            try:
                offsets = await gate.produce(pipe.topic, values, keys)
            finally:
                metrics.in_flight.dec(len(values))
            cm.batch_seconds.observe(time.perf_counter() - p0)
        except IngestError as exc:
            if exc.status in (503, 500):
                cm.error("unavailable" if exc.status == 503 else "delivery")
            content: dict[str, Any] = {"error": exc.message}
            if exc.errors is not None:
                content["errors"] = exc.errors
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
            metrics.duration.labels(name).observe(time.perf_counter() - t0)
            return answer(name, exc.status, content, headers)
        cm.records.inc(len(values))
        cm.last_success.set(time.time())
        metrics.records.labels(name, "accepted").inc(len(values))
        metrics.duration.labels(name).observe(time.perf_counter() - t0)
        return answer(name, 200, {"accepted": len(values), "topic": pipe.topic, "offsets": offsets})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        cm.up.set(1 if gate.ready else 0)
        return Response(status_code=200 if gate.ready else 503)

    async def metrics_text(request: Request) -> Response:
        if not authorised(request):
            return _json({"error": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"})
        cm.up.set(1 if gate.ready else 0)
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)

    routes = [Route("/ingest/{pipeline}", ingest, methods=["POST"]), Route("/health/live", live),
              Route("/health/ready", ready), Route("/metrics", metrics_text)]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise IngestError(413, f"body of {int(length)} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise IngestError(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _keys(pipe: IngestPipeline, rows: list[Any], values: list[bytes]) -> list[bytes | None]:
    field = pipe.key_field
    if pipe.schema is not None:
        raw = [getattr(r, field, None) for r in rows]
    else:
        raw = [r.get(field) if isinstance(r, dict) else orjson.loads(v).get(field) for r, v in zip(rows, values)]
    return [None if k is None else str(k).encode() for k in raw]


class IngestServer(HttpServer):
    """Serve ``pipelines`` on ``host:port`` (0: a free port); :meth:`start` in a thread or :meth:`run`."""

    thread_name = "tidal-ingest-http"

    def __init__(self, pipelines: Sequence[IngestPipeline], settings: KafkaSettings, *, host: str = "127.0.0.1",
                 port: int = 8088, timeout_s: float = 10.0, max_in_flight: int = 100_000,
                 max_body_bytes: int = 16 * 1024 * 1024, producer_config: dict[str, Any] | None = None,
                 registry: CollectorRegistry | None = None, probe_s: float = 2.0, log_level: str = "warning",
                 token: str | None = None) -> None:
        names = [p.name for p in pipelines]
        if len(set(names)) != len(names):
            raise ValueError(f"pipelines named twice: {names}")
        self.pipelines = list(pipelines)
        self.metrics = IngestMetrics(registry)
        self.gate = KafkaGate(settings, timeout_s=timeout_s, max_in_flight=max_in_flight,
                              producer_config=producer_config, probe_s=probe_s)
        super().__init__(create_ingest_app(self.pipelines, self.gate, self.metrics, max_body_bytes=max_body_bytes,
                                           token=token), host, port, log_level)

    def _starting(self) -> None:
        self.gate.start([(p.topic, p.partitions) for p in self.pipelines])

    def _close(self) -> None:
        self.gate.close()
        super()._close()
