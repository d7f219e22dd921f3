"""Open Inference Protocol (v2) request and response types, tensors, and errors with a status.

A request carries named tensors (``name``, ``shape``, ``datatype``, ``data``); ``data`` is the
row-major content, flat or nested. Decoding validates the JSON structure (msgspec), and
:func:`to_array` checks that the data fits the declared shape and datatype. With the binary
tensor data extension (:mod:`tidal.serve.binary`) a tensor has no ``data`` in the JSON: its
content arrives as raw bytes after the JSON and is decoded into a numpy array, which
:func:`to_array` then takes as it is.

>>> req = decode_request(b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0.5, 1.5]}]}')
>>> to_array(req.inputs[0])
array([0.5, 1.5])
>>> decode_request(b'{"inputs": 3}')
Traceback (most recent call last):
...
tidal.serve.protocol.BadRequest: invalid inference request: Expected `array`, got `int` - at `$.inputs`

Errors carry their HTTP status, so any transport can answer with it; the core imports no
web framework.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np

__all__ = ["ServeError", "BadRequest", "Unauthorized", "ModelNotFound", "PayloadTooLarge", "InvalidInput",
           "ModelError", "ModelNotReady", "RequestInput", "RequestOutput", "InferenceRequest", "decode_request",
           "to_array", "output_tensor", "DATATYPES", "datatype_of"]


class ServeError(Exception):
    """An error with the HTTP status a transport should answer it with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServeError):
    """Malformed request: not JSON, wrong structure, data that does not fit its shape."""

    status = 400


class Unauthorized(ServeError):
    status = 401


class ModelNotFound(ServeError):
    """No such model or version on this server."""

    status = 404


class PayloadTooLarge(ServeError):
    status = 413


class InvalidInput(ServeError):
    """A well-formed request that does not fit the model's signature (missing or unknown inputs, types)."""

    status = 422


class ModelError(ServeError):
    """The model raised while scoring a request that passed validation."""

    status = 500


class ModelNotReady(ServeError):
    """The model is known but has no loaded version yet (e.g. no deployment seen)."""

    status = 503


# OIP datatype -> numpy dtype (BYTES: Python strings, kept as an object array).
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}
_OF_KIND = {"b": "BOOL", "f": "FP64", "i": "INT64", "u": "UINT64", "O": "BYTES", "U": "BYTES", "S": "BYTES"}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name of a numpy array (float32 → FP32, strings → BYTES, …)."""
    for name, dtype in DATATYPES.items():
        if dtype is not object and array.dtype == dtype:
            return name
    return _OF_KIND.get(array.dtype.kind, "BYTES")


class RequestInput(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    shape: list[int]
    datatype: str
    data: Any = msgspec.UNSET  # UNSET: absent (binary tensor data); an ndarray: decoded from binary data
    parameters: dict[str, Any] | None = None


class RequestOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(msgspec.Struct):
    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


_decoder = msgspec.json.Decoder(InferenceRequest)


def decode_request(body: bytes) -> InferenceRequest:
    """Parse and structurally validate an inference request body; raises :class:`BadRequest`."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not req.inputs:
        raise BadRequest("invalid inference request: 'inputs' is empty")
    return req


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    for item in data:
        if not isinstance(item, list):
            raise BadRequest(f"input {name!r}: nested data mixes lists and values")
        out.extend(_flatten(item, name))
    return out


def to_array(tensor: RequestInput) -> np.ndarray:
    """The tensor's data as a numpy array of its shape and datatype; raises :class:`BadRequest`."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise BadRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}; use one of {sorted(DATATYPES)}")
    if any(d < 0 for d in tensor.shape):
        raise BadRequest(f"input {tensor.name!r}: negative dimension in shape {tensor.shape}")
    if isinstance(tensor.data, np.ndarray):  # binary tensor data, already checked against shape and datatype
        return tensor.data
    if tensor.data is msgspec.UNSET:
        raise BadRequest(f"input {tensor.name!r}: missing required field 'data' (or binary data: "
                         f"parameters.binary_data_size with an Inference-Header-Content-Length header)")
    flat = _flatten(tensor.data, tensor.name)
    expected = math.prod(tensor.shape)
    if len(flat) != expected:
        raise BadRequest(f"input {tensor.name!r}: shape {tensor.shape} needs {expected} values, data has {len(flat)}")
    if dtype is object:
        if not all(isinstance(v, str) or v is None for v in flat):
            raise BadRequest(f"input {tensor.name!r}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = _numbers(tensor, flat, dtype)
    return array.reshape(tensor.shape)


def _numbers(tensor: RequestInput, flat: list[Any], dtype: Any) -> np.ndarray:
    try:
        array = np.asarray(flat)  # numbers only: numpy infers a numeric dtype in C, no per-value Python check
    except ValueError:  # e.g. lists of different lengths inside
        array = np.empty(0, dtype=object)
    if array.dtype.kind in "biuf" and len(array) == len(flat):
        return array.astype(dtype, copy=False)
    bad = next((v for v in flat if not isinstance(v, (int, float)) and v is not None), None)
    if bad is not None or array.dtype.kind in "USV":
        raise BadRequest(f"input {tensor.name!r}: {tensor.datatype} data must be numbers, got {bad!r}")
    if np.dtype(dtype).kind != "f":
        if None in flat:
            raise BadRequest(f"input {tensor.name!r}: null is only allowed in FP data (as a missing value)")
        raise BadRequest(f"input {tensor.name!r}: data does not fit {tensor.datatype}")
    return np.asarray(flat, dtype=np.float64).astype(dtype, copy=False)  # null (JSON) → NaN: a missing value


def output_tensor(name: str, values: np.ndarray) -> dict[str, Any]:
    """One response output: ``{"name", "shape", "datatype", "data"}`` with flat row-major data."""
    values = np.asarray(values)
    data = values.reshape(-1)
    return {"name": name, "shape": list(values.shape), "datatype": datatype_of(values),
            "data": data.tolist() if data.dtype == object else data}
