"""The gRPC adapter: the Open Inference Protocol v2 ``inference.GRPCInferenceService`` over :class:`DataPlane`.

The same data plane as the HTTP app answers (same adaptive batchers, model routing, metrics):
:class:`GrpcEndpoint` runs a ``grpc.aio`` server on the HTTP server's event loop, so gRPC and
HTTP requests for one model version are batched together. Stubs come from
``proto/grpc_predict_v2.proto`` (:mod:`tidal.serve.grpc_stubs`); any client built against the
KServe or Triton proto (``tritonclient.grpc``, KServe's ``InferenceGRPCClient``) talks to it.

RPCs: ``ServerLive``, ``ServerReady``, ``ModelReady`` (open, like the HTTP health routes),
``ServerMetadata``, ``ModelMetadata``, ``ModelInfer`` (with the server's token: metadata
``authorization: Bearer <token>``). Metadata ``x-tidal-key`` picks the canary / A-B side, as the
``X-Tidal-Key`` header does.

Inputs come from ``contents`` (the datatype's field: ``fp64_contents`` for FP64, ``int_contents``
for INT8/16/32, ``bytes_contents`` for BYTES, …) or, for every input at once, from
``raw_input_contents`` (little-endian; BYTES as a 4-byte little-endian length before each
element). Outputs are sent as ``raw_output_contents``, one entry per output, as Triton does.

Errors map to status codes: malformed request or inputs that do not fit the model
(HTTP 400 / 422) → ``INVALID_ARGUMENT``; missing or wrong token → ``UNAUTHENTICATED``; unknown
model or version → ``NOT_FOUND``; a message over the body limit or too many rows →
``RESOURCE_EXHAUSTED``; model not ready → ``UNAVAILABLE``; a model failure → ``INTERNAL`` with
its message; anything else → ``INTERNAL`` naming only a log reference.

>>> import numpy as np
>>> pb2 = stubs()[0]
>>> msg = pb2.ModelInferRequest(model_name="m")
>>> msg.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([0.5, 2])
>>> to_inference_request(msg).inputs[0].data
array([0.5, 2. ], dtype=float32)
>>> msg.raw_input_contents.append(b"1234")
>>> to_inference_request(msg)
Traceback (most recent call last):
...
tidal.serve.protocol.BadRequest: input 'x': has contents while the request has raw_input_contents; send one of them
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import uuid
from types import ModuleType
from typing import Any, Awaitable, Callable

import grpc
import numpy as np

from tidal.serve.binary import _array as raw_array
from tidal.serve.binary import tensor_bytes
from tidal.serve.dataplane import DataPlane
from tidal.serve.grpc_stubs import load as stubs
from tidal.serve.protocol import (DATATYPES, BadRequest, InferenceRequest, RequestInput, RequestOutput, ServeError,
                                  Unauthorized)

__all__ = ["GrpcEndpoint", "InferenceServicer", "to_inference_request", "to_infer_response", "status_code",
           "KEY_METADATA"]

log = logging.getLogger("tidal.serve")

KEY_METADATA = "x-tidal-key"

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}

# datatype -> the InferTensorContents field that carries it (FP16: raw_input_contents only)
_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
           "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
           "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_ALL_FIELDS = sorted(set(_FIELDS.values()))


def status_code(error: ServeError) -> grpc.StatusCode:
    """The gRPC status of a data-plane error (by its HTTP status; 5xx other than 503: INTERNAL)."""
    return _CODES.get(error.status, grpc.StatusCode.INTERNAL)


# -- messages -> data plane ----------------------------------------------------------------
def _parameters(params: Any) -> dict[str, Any] | None:
    """An ``InferParameter`` map as plain values (None when empty)."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out or None


def _contents_array(tensor: Any) -> np.ndarray:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; use one of {sorted(DATATYPES)}")
    if any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r}: negative dimension in shape {shape}")
    field = _FIELDS.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} data can only be sent as raw_input_contents")
    contents = tensor.contents
    other = next((f for f in _ALL_FIELDS if f != field and len(getattr(contents, f))), None)
    if other is not None:
        raise BadRequest(f"input {name!r}: {datatype} data goes in contents.{field}, not contents.{other}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} values, contents.{field} has {len(values)}")
    if dtype is object:
        array = np.empty(count, dtype=object)
        try:
            array[:] = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r}: BYTES elements must be UTF-8 text") from None
    else:
        array = np.asarray(values)
        if array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and len(array):
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise BadRequest(f"input {name!r}: a value does not fit {datatype}")
        array = array.astype(dtype, copy=False) if len(array) else np.empty(0, dtype=dtype)
    return array.reshape(shape)


def to_inference_request(message: Any) -> InferenceRequest:
    """A ``ModelInferRequest`` as the data plane's :class:`InferenceRequest`; raises :class:`BadRequest`."""
    if not message.inputs:
        raise BadRequest("invalid inference request: 'inputs' is empty")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs "
                         "(one per input, in order)")
    inputs = []
    for i, tensor in enumerate(message.inputs):
        params = _parameters(tensor.parameters)
        item = RequestInput(tensor.name, list(tensor.shape), tensor.datatype, parameters=params)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input {tensor.name!r}: has contents while the request has raw_input_contents; "
                                 "send one of them")
            try:
                item.data = raw_array(item, memoryview(raw[i]))
            except BadRequest as exc:
                raise BadRequest(exc.message.replace("binary_data_size", f"raw_input_contents[{i}] size")) from None
        else:
            item.data = _contents_array(tensor)
        inputs.append(item)
    outputs = [RequestOutput(o.name, _parameters(o.parameters)) for o in message.outputs] or None
    return InferenceRequest(inputs, id=message.id or None, parameters=_parameters(message.parameters),
                            outputs=outputs)


def _set_parameter(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def to_infer_response(pb2: ModuleType, out: dict[str, Any]) -> Any:
    """The data plane's answer as a ``ModelInferResponse``, outputs in ``raw_output_contents``."""
    response = pb2.ModelInferResponse(model_name=out["model_name"], model_version=str(out["model_version"]),
                                      id=out.get("id") or "")
    for key, value in (out.get("parameters") or {}).items():
        _set_parameter(response.parameters[key], value)
    for output in out["outputs"]:
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        response.raw_output_contents.append(tensor_bytes(output))
    return response


# -- the servicer ----------------------------------------------------------------------------
Method = Callable[[Any, Any, Any], Awaitable[Any]]


def _rpc(auth: bool) -> Callable[[Method], Method]:
    """Token check (``auth``) and error → status mapping around one RPC."""
    def wrap(fn: Method) -> Method:
        @functools.wraps(fn)
        async def method(self: "InferenceServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if auth:
                    self.check_token(context)
                return await fn(self, request, context)
            except ServeError as exc:
                self.plane.metrics.observe_error(exc.status)
                await context.abort(status_code(exc), exc.message)
            except Exception as exc:  # noqa: BLE001 - answered as INTERNAL; the details go to the log only
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                ref = uuid.uuid4().hex[:12]
                log.error("internal error %s on gRPC %s", ref, fn.__name__, exc_info=exc)
                self.plane.metrics.observe_error(500)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error (logged as {ref})")
        return method
    return wrap


class InferenceServicer:
    """``inference.GRPCInferenceService`` over ``plane``; ``token`` guards metadata and inference."""

    def __init__(self, plane: DataPlane, token: str | None = None) -> None:
        self.plane = plane
        self.pb2 = stubs()[0]
        self._expected = f"Bearer {token}".encode() if token else None

    def check_token(self, context: grpc.aio.ServicerContext) -> None:
        if self._expected is None:
            return
        given = _metadata(context, "authorization") or ""
        if not hmac.compare_digest(given.encode(), self._expected):
            raise Unauthorized("missing or wrong bearer token (metadata authorization: Bearer <token>)")

    @_rpc(auth=False)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb2.ServerLiveResponse(live=self.plane.live())

    @_rpc(auth=False)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb2.ServerReadyResponse(ready=self.plane.ready())

    @_rpc(auth=False)
    async def ModelReady(self, request: Any, context: Any) -> Any:
        return self.pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    @_rpc(auth=True)
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.metadata()
        return self.pb2.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                               extensions=list(meta.get("extensions") or []))

    @_rpc(auth=True)
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.plane.model_metadata(request.name, request.version or None)
        tensor = self.pb2.ModelMetadataResponse.TensorMetadata
        return self.pb2.ModelMetadataResponse(
            name=meta["name"], versions=[str(v) for v in meta["versions"]], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    @_rpc(auth=True)
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        name, version = request.model_name, request.model_version or None
        self.plane.repository.pick(name, version)  # NOT_FOUND / UNAVAILABLE before decoding the inputs
        out = await self.plane.infer(name, to_inference_request(request), version, _metadata(context, KEY_METADATA))
        return to_infer_response(self.pb2, out)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class GrpcEndpoint:
    """A ``grpc.aio`` server for ``plane`` on ``host:port`` (0: a free port), started on the running loop.

    ``max_message_bytes`` caps one request message (RESOURCE_EXHAUSTED above), like the HTTP body
    limit; ``max_concurrent_rpcs`` caps RPCs in flight (RESOURCE_EXHAUSTED above).
    """

    def __init__(self, plane: DataPlane, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024, max_concurrent_rpcs: int | None = 512) -> None:
        self.plane, self.host, self.port, self.token = plane, host, port, token
        self.max_message_bytes, self.max_concurrent_rpcs = max_message_bytes, max_concurrent_rpcs
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """``host:port`` as gRPC clients name it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Bind, then serve on the running event loop; returns the bound port (raises if it is taken)."""
        pb2_grpc = stubs()[1]
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", -1),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not a second listener beside it
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.plane, self.token), server)
        port = server.add_insecure_port(self.address)
        if not port:
            raise RuntimeError(f"gRPC could not bind {self.address}")
        self.port = port
        await server.start()
        self._server = server
        log.info("serving gRPC (OIP v2) on %s", self.address)
        return port

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting, let RPCs in flight finish for up to ``grace`` seconds, then cancel the rest."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
