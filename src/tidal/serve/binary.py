"""The Open Inference Protocol's binary tensor data extension (what ``tritonclient`` sends by default).

Request: an ``Inference-Header-Content-Length: N`` header says that the first ``N`` bytes of the
body are the JSON inference request; the rest are raw tensor bytes, concatenated in the order of
the inputs that carry ``"parameters": {"binary_data_size": k}`` (those have no ``data``). Numbers
are little-endian in their datatype (BOOL one byte); a ``BYTES`` tensor is each element as a
4-byte little-endian length followed by its bytes (UTF-8 text here: categorical values).

Response: outputs asked for in binary (``"parameters": {"binary_data_output": true}`` on the
request, or ``{"binary_data": true}`` on one of its ``outputs``, which wins) leave ``data`` out,
carry ``"parameters": {"binary_data_size": k}``, and their bytes follow the JSON; the response has
``Inference-Header-Content-Length`` and ``application/octet-stream``. With no binary output it is
plain JSON.

Every size is checked before an array is built, so a request can never make the server allocate
more than its body: the body limit holds as on the JSON path.

>>> import numpy as np
>>> from tidal.serve.protocol import to_array
>>> header = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}'
>>> req = decode_infer_request(header + np.array([0.5, 2], "<f4").tobytes(), str(len(header)))
>>> to_array(req.inputs[0])
array([0.5, 2. ], dtype=float32)
>>> decode_infer_request(header + b"1234", str(len(header)))
Traceback (most recent call last):
...
tidal.serve.protocol.BadRequest: input 'x': binary_data_size is 8 but only 4 binary bytes are left in the body
>>> out = {"model_name": "m", "outputs": [{"name": "score", "shape": [1], "datatype": "FP64", "data": np.array([0.25])}]}
>>> body, n = encode_infer_response(out, lambda name: True)
>>> body[:n], np.frombuffer(body[n:], "<f8")
(b'{"model_name":"m","outputs":[{"name":"score","shape":[1],"datatype":"FP64","parameters":{"binary_data_size":8}}]}', array([0.25]))
"""

from __future__ import annotations

import math
from typing import Any, Callable

import msgspec
import numpy as np
import orjson

from tidal.serve.protocol import DATATYPES, BadRequest, InferenceRequest, RequestInput, decode_request

__all__ = ["HEADER", "decode_infer_request", "binary_outputs", "encode_infer_response", "tensor_bytes"]

HEADER = "Inference-Header-Content-Length"
_LENGTH = 4  # the little-endian uint32 before each BYTES element


def _header_length(value: str | None, size: int) -> int:
    if value is None:
        return size  # no header: the whole body is JSON (and no tensor can have binary data)
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(f"{HEADER} must be a non-negative integer, got {value!r}")
    n = int(text)
    if n > size:
        raise BadRequest(f"{HEADER} is {n} but the body has only {size} bytes")
    return n


def _binary_size(tensor: RequestInput) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"input {tensor.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if tensor.data is not msgspec.UNSET:
        raise BadRequest(f"input {tensor.name!r} has both 'data' and binary_data_size; send one of them")
    return size


def decode_infer_request(body: bytes, header_length: str | None = None) -> InferenceRequest:
    """Parse an inference body, JSON or JSON + binary tensor data; raises :class:`BadRequest`.

    ``header_length`` is the ``Inference-Header-Content-Length`` header's value (``None``: absent).
    Inputs with binary data get their decoded array as ``data`` (which :func:`to_array` takes).
    """
    n = _header_length(header_length, len(body))
    request = decode_request(body[:n] if n < len(body) else body)
    raw = memoryview(body)[n:]
    offset = 0
    for tensor in request.inputs:
        size = _binary_size(tensor)
        if size is None:
            continue
        left = len(raw) - offset
        if size > left:
            raise BadRequest(f"input {tensor.name!r}: binary_data_size is {size} but only {left} binary bytes "
                             "are left in the body")
        tensor.data = _array(tensor, raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise BadRequest(f"{len(raw) - offset} bytes left over after the binary tensor data (the inputs' "
                         f"binary_data_size add up to {offset}; {len(raw)} bytes follow the {n}-byte JSON header)")
    return request


def _array(tensor: RequestInput, buf: memoryview) -> np.ndarray:
    """The tensor's binary data as an array of its shape and datatype, sizes checked before allocating."""
    name, shape = tensor.name, tensor.shape
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {tensor.datatype!r}; use one of {sorted(DATATYPES)}")
    if any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r}: negative dimension in shape {shape}")
    count = math.prod(shape)
    if dtype is object:
        return _strings(name, shape, count, buf)
    itemsize = np.dtype(dtype).itemsize
    if count * itemsize != len(buf):
        raise BadRequest(f"input {name!r}: binary_data_size is {len(buf)} but shape {shape} of "
                         f"{tensor.datatype} needs {count} × {itemsize} = {count * itemsize} bytes")
    if tensor.datatype == "BOOL":
        flat = np.frombuffer(buf, dtype=np.uint8) != 0
    else:  # little-endian on the wire; a copy in native order (writable, aligned)
        flat = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    return flat.reshape(shape)


def _strings(name: str, shape: list[int], count: int, buf: memoryview) -> np.ndarray:
    end = len(buf)
    if count * _LENGTH > end:
        raise BadRequest(f"input {name!r}: binary_data_size is {end} but shape {shape} of BYTES needs at least "
                         f"{count} × {_LENGTH} = {count * _LENGTH} bytes (a length before each element)")
    data = buf.tobytes()
    values = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + _LENGTH > end:
            raise BadRequest(f"input {name!r}: BYTES element {i}'s length runs past the end of its {end} bytes")
        length = int.from_bytes(data[pos:pos + _LENGTH], "little")
        pos += _LENGTH
        if pos + length > end:
            raise BadRequest(f"input {name!r}: BYTES element {i} of length {length} runs past the end of its "
                             f"{end} bytes")
        try:
            values[i] = data[pos:pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"input {name!r}: BYTES element {i} is not UTF-8 text") from None
        pos += length
    if pos != end:
        raise BadRequest(f"input {name!r}: {end - pos} bytes left over after its {count} BYTES elements "
                         f"(binary_data_size {end})")
    return values.reshape(shape)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false, got {value!r}")
    return value


def binary_outputs(request: InferenceRequest) -> Callable[[str], bool] | None:
    """Which outputs the response sends as binary data (``None``: none, plain JSON); raises :class:`BadRequest`.

    An output's own ``parameters.binary_data`` wins over the request's ``parameters.binary_data_output``.
    """
    default = _flag((request.parameters or {}).get("binary_data_output", False), "parameters.binary_data_output")
    own = {o.name: _flag(o.parameters["binary_data"], f"output {o.name!r}: parameters.binary_data")
           for o in request.outputs or [] if o.parameters and "binary_data" in o.parameters}
    if not default and not any(own.values()):
        return None
    return lambda name: own.get(name, default)


def tensor_bytes(output: dict[str, Any]) -> bytes:
    """An output tensor's data (as :func:`~tidal.serve.protocol.output_tensor` makes it) in binary form."""
    datatype, data = output["datatype"], output["data"]
    if datatype == "BYTES":
        parts = []
        for v in np.asarray(data, dtype=object).reshape(-1).tolist():
            b = v if isinstance(v, bytes) else b"" if v is None else str(v).encode("utf-8")
            parts += [len(b).to_bytes(_LENGTH, "little"), b]
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(data, dtype=np.bool_).tobytes()
    return np.ascontiguousarray(data, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<")).tobytes()


def encode_infer_response(response: dict[str, Any], binary: Callable[[str], bool]) -> tuple[bytes, int] | None:
    """``(JSON header + raw bytes, header length)`` for the outputs ``binary`` picks; ``None``: none, send JSON."""
    outputs, chunks = [], []
    for output in response["outputs"]:
        if binary(output["name"]):
            raw = tensor_bytes(output)
            output = {k: v for k, v in output.items() if k != "data"}
            output["parameters"] = {**(output.get("parameters") or {}), "binary_data_size": len(raw)}
            chunks.append(raw)
        outputs.append(output)
    if not chunks:
        return None
    header = orjson.dumps({**response, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    return header + b"".join(chunks), len(header)

