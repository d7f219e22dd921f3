"""The Kafka adapter: Open Inference Protocol v2 inference requests as Kafka records (``tidal serve --kafka-input``).

A request record's value is the JSON body of ``POST /v2/models/{model}/infer``
(``{"id": ..., "inputs": [...], "parameters": ..., "outputs": ...}``); its headers name the
model, as MLServer's Kafka server reads them:

- model: ``tidal-model`` or ``mlserver-model`` (absent: the only model served);
- version: ``tidal-version`` or ``mlserver-version`` (absent: the deployment's routing);
- canary / A-B key: ``tidal-key``, else ``parameters.key``, else the record's Kafka key (as the
  stream engine routes events by their key).

Each answer is the OIP v2 response JSON, written to the output topic **keyed by the request's
key**, with the request's headers back plus ``tidal-request-id`` (the correlation id, also the
body's ``id``), ``tidal-model`` / ``tidal-model-version`` (who answered) and the CloudEvents
headers MLServer writes (``Ce-Id``, ``Ce-Requestid``, ``Ce-Modelid``, ``Ce-Type``, ...). The
request id is the body's ``id``, else a ``tidal-request-id`` header, else the record's key,
else ``<topic>-<partition>-<offset>`` (stable, so a redelivered request keeps its id).

Requests that cannot be answered go to the dead-letter topic with the original key and value
and the stream engine's DLQ headers (:func:`tidal.stream.encode.dlq_headers`: ``tidal.error.reason``,
``tidal.error.message``, ``tidal.source.*``). Reasons: ``invalid_json`` / ``wrong_type`` (not a
JSON object, from the engine's decoder), ``invalid_request`` (not an inference request: no
``inputs``, wrong structure), ``unknown_model`` (no such model or version, or no model header
with several models served), ``invalid_input`` (shapes, datatypes, missing or unknown inputs),
``too_large``, ``model_not_ready``, ``model_error`` (the model raised), ``internal_error``.

Delivery is the stream engine's: a :class:`~tidal.stream.Pipeline` with no schema whose one
step, :class:`InferenceRequestStep`, turns a micro-batch of request records into response
records (side outputs, so they carry keys and headers) and dead letters (the batch's rejects).
The :class:`~tidal.stream.Worker` produces both with the batch and commits the input offsets
only once the broker acknowledged them (at-least-once; ``exactly_once=True``: one transaction),
so a crash loses no request; a restart may answer the last requests again. All the requests of
a micro-batch are scored together: they join the data plane's adaptive batchers at once and are
flushed as soon as the last one is queued, so one model call scores many requests.

The step reads each request's record headers from the batch (:attr:`tidal.stream.Batch.headers`),
so a plain :class:`~tidal.stream.Worker` runs it like any other step.

>>> import tempfile, orjson
>>> from sklearn.linear_model import LogisticRegression
>>> from tidal.models import save_model
>>> from tidal.serve.repository import ModelRepository
>>> from tidal.stream import Pipeline
>>> folder = tempfile.mkdtemp()
>>> _ = save_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), folder, "toy", 1, ["x"])
>>> repo = ModelRepository(); _ = repo.add_folder(folder)
>>> step = InferenceRequestStep(DataPlane(repo, max_batch_size=64, max_batch_time=0.01), "answers")
>>> p = Pipeline("serve", steps=[step], lineage=False)
>>> side = []
>>> req = b'{"id": "r1", "inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0, 1]}]}'
>>> out, dlq = p.test([req, b'{"inputs": []}'], side=side)
>>> out, [(r.reason, r.offset) for r in dlq]
([], [('invalid_request', 1)])
>>> answer = orjson.loads(side[0].value)
>>> answer["id"], answer["outputs"][1]["data"], dict(side[0].headers)["tidal-request-id"]
('r1', [False, True], b'r1')
>>> step.close()
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

import numpy as np
import orjson

from tidal.config import KafkaSettings
from tidal.serve.dataplane import DataPlane
from tidal.serve.protocol import (BadRequest, InferenceRequest, InvalidInput, ModelError, ModelNotFound, ModelNotReady,
                                  PayloadTooLarge, ServeError, decode_request)
from tidal.serve.repository import ModelRepository
from tidal.stream.batch import Batch, Reject
from tidal.stream.pipeline import Pipeline
from tidal.stream.step import Step
from tidal.stream.worker import Worker, WorkerStats

__all__ = ["InferenceRequestStep", "KafkaInference", "inference_pipeline", "request_headers",
           "MODEL_HEADERS", "VERSION_HEADERS", "KEY_HEADER", "REQUEST_ID_HEADER", "STEP"]

log = logging.getLogger("tidal.serve")

STEP = "infer"
MODEL_HEADERS = ("tidal-model", "mlserver-model")
VERSION_HEADERS = ("tidal-version", "mlserver-version")
KEY_HEADER = "tidal-key"
REQUEST_ID_HEADER = "tidal-request-id"
#: CloudEvents headers MLServer puts on its responses (type and spec version as MLServer writes them).
CE_TYPE = b"io.seldon.serving.inference.response"
CE_SPECVERSION = b"0.3"
CE_SOURCE = b"io.tidal.serve"

_OWN = {REQUEST_ID_HEADER, "tidal-model", "tidal-model-version", "Ce-Id", "Ce-Specversion", "Ce-Source", "Ce-Type",
        "Ce-Requestid", "Ce-Modelid"}
_REASONS: tuple[tuple[type, str], ...] = (
    (ModelNotFound, "unknown_model"), (ModelNotReady, "model_not_ready"), (PayloadTooLarge, "too_large"),
    (InvalidInput, "invalid_input"), (BadRequest, "invalid_input"), (ModelError, "model_error"),
)
Headers = list[tuple[str, bytes | None]]


def _reason(exc: BaseException) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "internal_error"


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def request_headers(headers: Headers | None) -> dict[str, str]:
    """A record's headers as text (the last value of a repeated name wins; non-UTF-8 values dropped)."""
    out: dict[str, str] = {}
    for k, v in headers or ():
        t = _text(v)
        if t is not None:
            out[k] = t
    return out


def _first(h: dict[str, str], names: Sequence[str]) -> str | None:
    for n in names:
        v = h.get(n)
        if v:
            return v
    return None


class InferenceRequestStep(Step):
    """Request records → OIP v2 responses (side outputs to ``output``) and dead letters (rejects).

    ``plane``: the data plane that answers (its adaptive batching on: each micro-batch is scored
    in ``rows / max_batch_size`` model calls). Each request's headers come from
    :attr:`tidal.stream.Batch.headers`.
    """

    name = STEP
    error_reason = "internal_error"

    def __init__(self, plane: DataPlane, output: str) -> None:
        self.plane = plane
        self.output = output
        self.side_outputs = (output,)
        self.answered = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def adds(self) -> list[str]:
        return []

    def open(self, ctx: Any) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _model(self, h: dict[str, str]) -> tuple[str, str | None]:
        name = _first(h, MODEL_HEADERS)
        if name is None:
            names = self.plane.repository.names()
            if len(names) != 1:
                raise ModelNotFound(f"no model named: set header {MODEL_HEADERS[1]} (or {MODEL_HEADERS[0]}); "
                                    f"this server serves {', '.join(names) or 'no models'}")
            name = names[0]
        return name, _first(h, VERSION_HEADERS)

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        topics, partitions, offsets = batch.topics, batch.partitions.tolist(), batch.offsets.tolist()
        jobs: list[tuple[int, str, str | None, str | None, InferenceRequest, Headers, str]] = []
        failed: dict[int, tuple[str, str]] = {}
        all_headers = batch.headers
        for i in range(n):
            raw = all_headers[i]
            h = request_headers(raw)
            try:
                request = decode_request(batch.values[i])
            except BadRequest as exc:
                failed[i] = ("invalid_request", exc.message)
                continue
            kafka_key = _text(batch.keys[i]) if batch.keys[i] is not None else None
            rid = request.id or h.get(REQUEST_ID_HEADER) or kafka_key or f"{topics[i]}-{partitions[i]}-{offsets[i]}"
            request.id = rid
            try:
                name, version = self._model(h)
            except ServeError as exc:
                failed[i] = (_reason(exc), exc.message)
                continue
            key = h.get(KEY_HEADER)
            if key is None and "key" not in (request.parameters or {}):
                key = kafka_key
            jobs.append((i, name, version, key, request, raw, rid))
        results = self._loop.run_until_complete(self._answer(jobs)) if jobs else []
        emit = self.ctx.emit if self.ctx is not None else None
        dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        for (i, name, _v, _k, _r, raw, rid), out in zip(jobs, results):
            if isinstance(out, BaseException):
                if not isinstance(out, ServeError):
                    log.error("request %s (%s:%d@%d) failed", rid, topics[i], partitions[i], offsets[i], exc_info=out)
                failed[i] = (_reason(out), out.message if isinstance(out, ServeError) else
                             f"{type(out).__name__}: {out}")
                continue
            rid_b = rid.encode()
            headers = [(k, v) for k, v in raw if k not in _OWN]
            headers += [(REQUEST_ID_HEADER, rid_b), ("tidal-model", name.encode()),
                        ("tidal-model-version", str(out["model_version"]).encode()),
                        ("Ce-Id", rid_b), ("Ce-Specversion", CE_SPECVERSION), ("Ce-Source", CE_SOURCE),
                        ("Ce-Type", CE_TYPE), ("Ce-Requestid", rid_b), ("Ce-Modelid", name.encode())]
            if emit is not None:
                emit(self.output, dumps(out, option=opt), batch.keys[i], headers)
            self.answered += 1
        rest = batch.select(np.zeros(n, dtype=bool))  # every request answered or dead-lettered: nothing for the sink
        for i in sorted(failed):
            reason, message = failed[i]
            self.plane.metrics.observe_error(_STATUS.get(reason, 500))
            rest.rejected.append(Reject(batch.values[i], batch.keys[i], topics[i], partitions[i], offsets[i],
                                       int(batch.timestamps[i]), reason, message, STEP))
        return rest

    async def _answer(self, jobs: list) -> list[Any]:
        infer = self.plane.infer
        tasks = [asyncio.ensure_future(infer(name, request, version, key))
                 for _i, name, version, key, request, _h, _r in jobs]
        await asyncio.sleep(0)  # every request has joined its batcher now: score them without waiting
        self.plane.flush()
        return await asyncio.gather(*tasks, return_exceptions=True)


_STATUS = {"unknown_model": 404, "model_not_ready": 503, "too_large": 413, "invalid_input": 422,
           "invalid_request": 400, "model_error": 500}


def inference_pipeline(step: InferenceRequestStep, input: str, *, dlq: str | None = None, group: str | None = None,
                       max_batch: int = 500, max_wait_ms: int = 0, partitions: int = 4,
                       exactly_once: bool = False) -> Pipeline:
    """The pipeline ``input`` → ``step`` → responses on ``step.output``, dead letters on ``dlq``
    (default ``<input>.dlq``), consumer group ``group`` (default ``tidal.serve.<input>``)."""
    return Pipeline(f"serve.{input}", steps=[step], schema=None, sources=[input], sink=step.output,
                    dlq=dlq or f"{input}.dlq", group=group or f"tidal.serve.{input}", max_batch=max_batch,
                    max_wait_ms=max_wait_ms, partitions=partitions, exactly_once=exactly_once, lineage=False)


class KafkaInference:
    """Answer inference requests on ``input`` with the models of ``repository``, on ``output``.

    ``max_batch``: requests per micro-batch (one unit of delivery); ``max_batch_size`` /
    ``max_batch_time``: the data plane's batching (rows per model call); the rest as
    :class:`~tidal.stream.Worker` and :func:`inference_pipeline` take them.
    """

    def __init__(self, repository: ModelRepository, settings: KafkaSettings, input: str, output: str, *,
                 dlq: str | None = None, group: str | None = None, max_batch: int = 500, max_wait_ms: int = 0,
                 max_batch_size: int = 1024, max_batch_time: float = 0.002, max_rows: int = 100_000,
                 workers: int | None = None, partitions: int = 4, exactly_once: bool = False,
                 worker_id: str = "0", metrics_port: int | None = None, handle_signals: bool = True) -> None:
        self.settings = settings
        self.plane = DataPlane(repository, max_batch_size=max(2, max_batch_size), max_batch_time=max_batch_time
                               if max_batch_time > 0 else 0.002, max_rows=max_rows, workers=workers)
        self.step = InferenceRequestStep(self.plane, output)
        self.pipeline = inference_pipeline(self.step, input, dlq=dlq, group=group, max_batch=max_batch,
                                           max_wait_ms=max_wait_ms, partitions=partitions, exactly_once=exactly_once)
        self.worker = Worker(self.pipeline, settings, worker_id=worker_id, metrics_port=metrics_port,
                             handle_signals=handle_signals)

    @property
    def dlq(self) -> str:
        return self.pipeline.dlq  # type: ignore[return-value]

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Create missing topics, then consume, answer and commit until :meth:`stop` (or a signal)."""
        from tidal.broker import ensure_topics

        specs: dict[str, Any] = {}
        for spec in self.pipeline.topic_specs():  # the output is the sink and the step's side output: once
            specs.setdefault(spec.name, spec)
        ensure_topics(self.settings, list(specs.values()))
        try:
            return self.worker.run(idle_exit_s)
        finally:
            self.plane.close()

    def stop(self) -> None:
        self.worker.stop()
