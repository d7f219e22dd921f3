"""The model server: one place that wires repository → data plane → HTTP app → uvicorn.

Start-up binds the socket first (so ``port=0`` gets a free port that :attr:`ModelServer.url`
names at once), then serves. Shutdown runs in order: stop accepting and finish the requests
in flight (uvicorn), then stop following ``tidal.models``, then stop the scoring threads.

.. code-block:: python

    repo = ModelRepository(); repo.add_folder("models/fraud-v1")
    with ModelServer(repo, port=0, max_batch_size=64, max_batch_time=0.002).start() as server:
        httpx.post(f"{server.url}/v2/models/fraud/infer", json={...})
"""

from __future__ import annotations

import logging

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
                 registry: CollectorRegistry | None = None, log_level: str = "warning") -> None:
        self.repository = repository
        self.plane = DataPlane(repository, max_batch_size=max_batch_size, max_batch_time=max_batch_time,
                               max_rows=max_rows, workers=workers, metrics=ServeMetrics(registry))
        super().__init__(create_app(self.plane, max_body_bytes=max_body_bytes, token=token), host, port, log_level)

    def _starting(self) -> None:
        log.info("serving %s on %s", ", ".join(self.repository.names()) or "no models", self.url)

    def _close(self) -> None:
        self.repository.close()
        self.plane.close()
        super()._close()

