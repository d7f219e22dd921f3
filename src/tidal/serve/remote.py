"""The remote step: score micro-batches on a model server over the Open Inference Protocol v2.

``RemoteScoreStep(url, model)`` sends each micro-batch as one inference request (or chunks of
``chunk_rows``) to this server or any OIP v2 server (MLServer, KServe, Triton). Inputs follow
the model's metadata (``GET /v2/models/{model}``): one tensor per input name, ``BYTES`` or
``FP64``; with ``features=[...]`` it sends one ``[N, features]`` FP64 tensor named
``input_name`` instead, as servers without per-feature inputs expect. Each row's Kafka key goes
along (``parameters.keys``), so a tidal server in canary / A-B routes every row as the stream
engine would, and each output names the version that scored it.

Failures never lose events: a request is retried ``retries`` times with exponential backoff
(timeouts, connection errors, 429 and 5xx); when it still fails the step raises, so the worker
sends the batch to the DLQ with reason ``remote_error`` (original bytes, ready to replay). A
:class:`CircuitBreaker` opens after ``breaker_failures`` failed attempts in a row and then fails
batches at once — no waiting on a dead server — until ``breaker_cooldown`` seconds pass and one
probe request is let through; its success closes the circuit and scoring resumes.

>>> clock = [0.0]
>>> breaker = CircuitBreaker(failures=2, cooldown=5.0, clock=lambda: clock[0])
>>> breaker.failure(); breaker.failure(); breaker.state, breaker.allow()
('open', False)
>>> clock[0] = 6.0
>>> breaker.allow(), breaker.state, breaker.allow()
(True, 'half-open', False)
>>> breaker.success(); breaker.state
'closed'
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import Any, Callable

import httpx
import numpy as np
import orjson

from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["RemoteScoreStep", "CircuitBreaker", "RemoteError", "CircuitOpen"]

log = logging.getLogger("tidal.serve")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RemoteError(RuntimeError):
    """The model server did not score the batch (after retries), or answered something unusable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CircuitOpen(RemoteError):
    """The circuit breaker is open: the batch failed without calling the server."""


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures → half-open after ``cooldown`` s → closed."""

    def __init__(self, failures: int = 5, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self._count = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._probing else "open"

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        return 0.0 if self._opened_at is None else max(0.0, self._opened_at + self.cooldown - self.clock())

    def allow(self) -> bool:
        """Whether a call may go now; after the cool-down, exactly one probe is let through."""
        if self._opened_at is None:
            return True
        if not self._probing and self.clock() >= self._opened_at + self.cooldown:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._count, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        self._count += 1
        if self._probing or self._count >= self.failures:
            if self._opened_at is None or self._probing:
                log.warning("circuit open after %d failures; next probe in %.1fs", self._count, self.cooldown)
            self._opened_at, self._probing = self.clock(), False


class RemoteScoreStep(Step):
    """Score each micro-batch on an OIP v2 server; see the module docstring."""

    name = "remote"
    error_reason = "remote_error"

    def __init__(self, url: str, model: str, version: str | None = None, *, timeout: float = 5.0,
                 retries: int = 2, backoff: float = 0.05, max_backoff: float = 1.0, breaker_failures: int = 5,
                 breaker_cooldown: float = 5.0, chunk_rows: int = 5000, token: str | None = None,
                 features: list[str] | None = None, input_name: str = "input", output: str = "score",
                 threshold: float | None = None, send_keys: bool = True) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown)
        self.chunk_rows = max(1, chunk_rows)
        self.token = token
        self.features = features
        self.input_name = input_name
        self.output = output
        self.threshold = threshold
        self.send_keys = send_keys
        self.inputs: list[tuple[str, str]] | None = None  # (name, datatype) from the model's metadata
        self._client: httpx.Client | None = None
        self.requests = 0
        self._metrics: Any = None

    def open(self, ctx: Any) -> None:
        from tidal.models.metrics import ScoreMetrics

        self._metrics = ScoreMetrics.of(ctx.registry, ctx.pipeline)

    @property
    def path(self) -> str:
        v = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{v}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            headers = {"content-type": "application/json"}
            if self.token:
                headers["authorization"] = f"Bearer {self.token}"
            nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # no Nagle wait on a body's last segment
            self._client = httpx.Client(base_url=self.url, timeout=self.timeout, headers=headers,
                                        transport=httpx.HTTPTransport(socket_options=nodelay))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- HTTP with retries and the breaker -------------------------------------------------
    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if not self.breaker.allow():
                raise CircuitOpen(f"circuit open to {self.url} (next probe in {self.breaker.retry_in():.1f}s); "
                                  f"last error: {last}")
            try:
                self.requests += 1
                r = self.client.request(method, path, content=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                self.breaker.failure()
            else:
                if r.status_code < 400:
                    self.breaker.success()
                    return orjson.loads(r.content)
                last = f"HTTP {r.status_code}: {_error_text(r)}"
                if r.status_code not in _RETRY_STATUS:  # the server is up; the request itself is wrong
                    self.breaker.success()
                    raise RemoteError(f"{method} {self.url}{path}: {last}", r.status_code)
                self.breaker.failure()
            if attempt < self.retries:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0))
        raise RemoteError(f"{method} {self.url}{path} failed {self.retries + 1} times; last: {last}")

    def _signature(self) -> list[tuple[str, str]]:
        if self.inputs is None:
            meta = self._call("GET", self.path)
            self.inputs = [(i["name"], i.get("datatype", "FP64")) for i in meta.get("inputs", [])]
            if not self.inputs:
                raise RemoteError(f"{self.url}{self.path}: metadata lists no inputs; pass features=[...]")
        return self.inputs

    # -- the step --------------------------------------------------------------------------
    def _payload(self, batch: Batch, start: int, stop: int) -> bytes:
        n = stop - start
        if self.features is not None:
            X = np.column_stack([np.asarray(batch.column(f)[start:stop], dtype=np.float64) for f in self.features])
            inputs = [{"name": self.input_name, "shape": [n, len(self.features)], "datatype": "FP64",
                       "data": X.reshape(-1)}]
        else:
            inputs = []
            for name, datatype in self._signature():
                col = batch.column(name)[start:stop]
                if datatype == "BYTES":
                    data: Any = [None if v is None else str(v) for v in col.tolist()]
                else:
                    data = np.asarray(col, dtype=np.float64)
                    datatype = "FP64"
                inputs.append({"name": name, "shape": [n], "datatype": datatype, "data": data})
        body: dict[str, Any] = {"inputs": inputs}
        if self.send_keys:  # a tidal server routes each row by its Kafka key (canary / A-B); others ignore it
            body["parameters"] = {"keys": [None if k is None else k.decode("utf-8", "replace")
                                           for k in batch.keys[start:stop]]}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        if not n:
            return batch
        scores = np.empty(n)
        decisions: np.ndarray | None = None
        versions = np.empty(n, dtype=object)
        for start in range(0, n, self.chunk_rows):
            stop = min(n, start + self.chunk_rows)
            try:
                answer = self._call("POST", self.path + "/infer", self._payload(batch, start, stop))
            except RemoteError as exc:  # 422: the deployed model's inputs changed; read them again, once
                if exc.status != 422 or self.inputs is None or self.features is not None:
                    raise
                self.inputs = None
                answer = self._call("POST", self.path + "/infer", self._payload(batch, start, stop))
            outputs = {o["name"]: o for o in answer.get("outputs", [])}
            out = outputs.get(self.output) or next(iter(outputs.values()), None)
            if out is None or len(out["data"]) != stop - start:
                raise RemoteError(f"{self.url}: answer has no {self.output!r} output of {stop - start} values")
            scores[start:stop] = np.asarray(out["data"], dtype=np.float64)
            if "decision" in outputs and self.threshold is None:
                decisions = np.zeros(n, dtype=bool) if decisions is None else decisions
                decisions[start:stop] = np.asarray(outputs["decision"]["data"], dtype=bool)
            if "model_version" in outputs:  # per row, when the server split the batch by key
                versions[start:stop] = [str(v) for v in outputs["model_version"]["data"]]
            else:
                versions[start:stop] = str(answer.get("model_version", self.version or ""))
        batch.with_column("score", scores)
        if self.threshold is not None:
            batch.with_column("decision", scores >= self.threshold)
        elif decisions is not None:
            batch.with_column("decision", decisions)
        batch.with_column("model", np.full(n, self.model, dtype=object))
        batch.with_column("model_version", versions)
        if self._metrics is not None:
            self._metrics.observe(batch)
        return batch


def _error_text(r: httpx.Response) -> str:
    try:
        return str(orjson.loads(r.content).get("error", r.text))[:300]
    except (orjson.JSONDecodeError, AttributeError):
        return r.text[:300]


def from_spec(args: dict, base: Any = None, kind: str = "remote", previous: list | None = None) -> RemoteScoreStep:
    """YAML ``- remote: {url: http://..., model: fraud}``: score on a model server (OIP v2)."""
    return RemoteScoreStep(args.pop("url"), args.pop("model"), **args)
