"""The model server: one place that wires repository → data plane → HTTP app → uvicorn (and gRPC).

Start-up binds the socket first (so ``port=0`` gets a free port that :attr:`ModelServer.url`
names at once), then serves. Shutdown runs in order: stop accepting and finish the requests
in flight (uvicorn), then stop following ``tidal.models``, then stop the scoring threads.

.. code-block:: python

    repo = ModelRepository(); repo.add_folder("models/fraud-v1")
    with ModelServer(repo, port=0, max_batch_size=64, max_batch_time=0.002).start() as server:
        httpx.post(f"{server.url}/v2/models/fraud/infer", json={...})

With ``grpc_port`` (0: a free one) the same data plane also answers the OIP v2 gRPC service
(:mod:`tidal.serve.grpc_server`) on uvicorn's event loop: it binds and starts before uvicorn
accepts (so :attr:`ModelServer.grpc_address` is final once :meth:`~ModelServer.start` returns)
and stops beside it, RPCs in flight finishing within the same grace period.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from tidal.serve.app import DEFAULT_MAX_BODY, create_app
from tidal.serve.dataplane import DataPlane
from tidal.httpserver import HttpServer
from tidal.serve.metrics import ServeMetrics
from tidal.serve.repository import ModelRepository

__all__ = ["ModelServer"]

log = logging.getLogger("tidal.serve")


class ModelServer(HttpServer):
    """Serve ``repository`` over HTTP; :meth:`start` in a thread or :meth:`run` in the foreground."""

    thread_name = "tidal-serve"

    def __init__(self, repository: ModelRepository, *, host: str = "127.0.0.1", port: int = 0,
                 max_batch_size: int = 0, max_batch_time: float = 0.0, max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_rows: int = 100_000, token: str | None = None, workers: int | None = None,
                 registry: CollectorRegistry | None = None, log_level: str = "warning",
                 grpc_port: int | None = None, max_in_flight: int | None = None) -> None:
        self.repository = repository
        self.plane = DataPlane(repository, max_batch_size=max_batch_size, max_batch_time=max_batch_time,
                               max_rows=max_rows, workers=workers, metrics=ServeMetrics(registry))
        super().__init__(create_app(self.plane, max_body_bytes=max_body_bytes, token=token), host, port, log_level,
                         max_in_flight)
        self.grpc: Any = None  # a GrpcEndpoint when grpc_port is given (grpcio imported only then)
        if grpc_port is not None:
            from tidal.serve.grpc_server import GrpcEndpoint

            self.grpc = GrpcEndpoint(self.plane, host, grpc_port, token=token, max_message_bytes=max_body_bytes,
                                     max_concurrent_rpcs=self.limit_concurrency)

    @property
    def grpc_address(self) -> str | None:
        """``host:port`` of the gRPC service (None without one; with port 0, final once started)."""
        return self.grpc.address if self.grpc is not None else None

    def bind(self) -> socket.socket:
        fresh = self._socket is None
        sock = super().bind()
        if fresh and self.grpc is not None:  # the same uvicorn config, with gRPC started on its loop
            self._server = _WithGrpc(self._server.config, self.grpc, self.graceful_s)
        return sock

    def _grpc_failed(self) -> None:
        error = getattr(self._server, "grpc_error", None)
        if error is not None:
            raise RuntimeError(f"gRPC on {self.grpc_address} did not start: {error}") from error

    def start(self, timeout: float = 10.0) -> "ModelServer":
        try:
            return super().start(timeout)
        except RuntimeError:
            self._grpc_failed()
            raise

    def run(self) -> None:
        super().run()
        self._grpc_failed()

    def _starting(self) -> None:
        log.info("serving %s on %s", ", ".join(self.repository.names()) or "no models", self.url)

    def _close(self) -> None:
        self.repository.close()
        self.plane.close()
        super()._close()


class _WithGrpc(uvicorn.Server):
    """uvicorn that starts a :class:`~tidal.serve.grpc_server.GrpcEndpoint` on its loop and stops it beside itself."""

    def __init__(self, config: uvicorn.Config, grpc: Any, grace: float) -> None:
        super().__init__(config)
        self.grpc, self.grace = grpc, grace
        self.grpc_error: Exception | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.grpc.start()
        except Exception as exc:  # noqa: BLE001 - e.g. the port is taken: uvicorn does not start either
            self.grpc_error, self.should_exit = exc, True
            return
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.gather(self.grpc.stop(self.grace), super().shutdown(sockets=sockets))
