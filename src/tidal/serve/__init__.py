"""Model serving: an Open Inference Protocol v2 server, ONNX Runtime models, and the remote step.

- :mod:`~tidal.serve.dataplane`: the transport-free scoring core (adaptive batching, metrics);
- :mod:`~tidal.serve.app` / :mod:`~tidal.serve.server`: the HTTP adapter and its wiring (``tidal serve``);
- :mod:`~tidal.serve.kafka`: inference requests as Kafka records (``tidal serve --kafka-input``), on the stream engine;
- :mod:`~tidal.serve.onnx`: conversion with a parity check (``onnx`` models run in
  :mod:`tidal.models.runtimes.onnx`);
- :mod:`~tidal.serve.remote`: :class:`RemoteScoreStep`, a pipeline step that calls a model server.

The web framework is imported only when the server is used (``ModelServer``, ``create_app``).
"""

from __future__ import annotations

from typing import Any

from tidal.serve.batching import AdaptiveBatcher
from tidal.serve.dataplane import DataPlane
from tidal.serve.metrics import ServeMetrics
from tidal.serve.onnx import ConversionError, OnnxModel, convert
from tidal.serve.protocol import ServeError
from tidal.serve.remote import CircuitBreaker, RemoteError, RemoteScoreStep
from tidal.serve.repository import ModelRepository

__all__ = ["AdaptiveBatcher", "CircuitBreaker", "ConversionError", "DataPlane", "ModelRepository", "ModelServer",
           "OnnxModel", "RemoteError", "RemoteScoreStep", "ServeError", "ServeMetrics", "convert", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "ModelServer":
        from tidal.serve.server import ModelServer

        return ModelServer
    if name == "create_app":
        from tidal.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'tidal.serve' has no attribute {name!r}")
