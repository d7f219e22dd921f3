"""The HTTP adapter: Open Inference Protocol v2 routes over :class:`~tidal.serve.dataplane.DataPlane`.

Routes (``{v}`` routes address one loaded version; without it the deployment decides, using
the ``X-Tidal-Key`` header for canary / A-B):

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]/ready``: 200, or
  4xx (400 not ready, 404 unknown), empty body;
- ``GET /v2``, ``/v2/models/{name}[/versions/{v}]``: server and model metadata;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: inference (OIP JSON tensors, or the binary tensor
  data extension that ``tritonclient`` uses: see :mod:`tidal.serve.binary`);
- ``POST /predict/{name}``: JSON records in, ``{"predictions": [{"score", "decision"}]}`` out;
- ``GET /metrics``: Prometheus text format.

Errors answer ``{"error": "..."}`` with the error's status: 400 malformed, 401 missing or wrong
bearer token (when the server has one; health routes stay open), 404 unknown model, version
or route, 413 body or rows over the limit, 422 inputs that do not fit the model, 503 not
ready. No route loads a file: models are fixed at start-up or arrive over ``tidal.models``.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Any, Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidal.serve.binary import HEADER, binary_outputs, decode_infer_request, encode_infer_response
from tidal.serve.dataplane import DataPlane
from tidal.serve.protocol import BadRequest, PayloadTooLarge, ServeError, Unauthorized

log = logging.getLogger("tidal.serve")

__all__ = ["create_app", "KEY_HEADER", "DEFAULT_MAX_BODY"]

KEY_HEADER = "x-tidal-key"
DEFAULT_MAX_BODY = 16 * 1024 * 1024
_JSON = "application/json"
_BINARY = "application/octet-stream"

Handler = Callable[[Request], Awaitable[Response]]


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=_JSON)


def create_app(plane: DataPlane, *, max_body_bytes: int = DEFAULT_MAX_BODY, token: str | None = None) -> Starlette:
    """A Starlette app serving ``plane``; ``token`` requires ``Authorization: Bearer <token>``."""
    metrics = plane.metrics
    expected = f"Bearer {token}".encode() if token else None

    def error(status: int, message: str) -> Response:
        metrics.observe_error(status)
        return _json({"error": message}, status)

    def guarded(fn: Handler, auth: bool = True) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                if auth and expected is not None:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected):
                        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")
                return await fn(request)
            except ServeError as exc:
                return error(exc.status, exc.message)
        return handler

    def probe(check: Callable[[Request], bool]) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                return Response(status_code=200 if check(request) else 400)
            except ServeError as exc:
                return Response(status_code=exc.status if exc.status < 500 else 400)
        return handler

    async def body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise PayloadTooLarge(f"body of {int(length)} bytes; this server takes at most {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise PayloadTooLarge(f"body over {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def params(request: Request) -> tuple[str, str | None]:
        return request.path_params["name"], request.path_params.get("version")

    async def server_metadata(request: Request) -> Response:
        meta = plane.metadata()
        extensions = list(meta.get("extensions") or [])
        if "binary_tensor_data" not in extensions:  # an HTTP-level extension: this app implements it
            extensions.append("binary_tensor_data")
        return _json({**meta, "extensions": extensions})

    async def model_metadata(request: Request) -> Response:
        return _json(plane.model_metadata(*params(request)))

    async def infer(request: Request) -> Response:
        name, version = params(request)
        plane.repository.pick(name, version)  # 404 / 503 before reading a large body
        req = decode_infer_request(await body(request), request.headers.get(HEADER))
        binary = binary_outputs(req)  # a bad flag is a 400 before the model runs
        out = await plane.infer(name, req, version, request.headers.get(KEY_HEADER))
        encoded = encode_infer_response(out, binary) if binary is not None else None
        if encoded is None:
            return _json(out)
        content, header_length = encoded
        return Response(content, 200, headers={HEADER: str(header_length)}, media_type=_BINARY)

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        plane.repository.pick(name)
        try:
            records = orjson.loads(await body(request))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        return _json(await plane.predict_records(name, records, None, request.headers.get(KEY_HEADER)))

    async def metrics_text(request: Request) -> Response:
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    def model_ready(request: Request) -> bool:
        return plane.model_ready(*params(request))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def unexpected(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:12]  # the details go to the server's log, not to the client
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error (logged as {ref})")

    m = "/v2/models/{name}"
    v = m + "/versions/{version}"
    routes = [
        Route("/v2/health/live", probe(lambda r: plane.live())),
        Route("/v2/health/ready", probe(lambda r: plane.ready())),
        Route("/v2", guarded(server_metadata)),
        Route(m, guarded(model_metadata)),
        Route(m + "/ready", probe(model_ready)),
        Route(v, guarded(model_metadata)),
        Route(v + "/ready", probe(model_ready)),
        Route(m + "/infer", guarded(infer), methods=["POST"]),
        Route(v + "/infer", guarded(infer), methods=["POST"]),
        Route("/predict/{name}", guarded(predict), methods=["POST"]),
        Route("/metrics", guarded(metrics_text)),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: unexpected})
