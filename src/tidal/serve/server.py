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
import signal
import socket
import threading
import time

import uvicorn
from prometheus_client import CollectorRegistry

from tidal.serve.app import DEFAULT_MAX_BODY, create_app
from tidal.serve.dataplane import DataPlane
from tidal.serve.metrics import ServeMetrics
from tidal.serve.repository import ModelRepository

__all__ = ["ModelServer"]

log = logging.getLogger("tidal.serve")


class ModelServer:
    """Serve ``repository`` over HTTP; :meth:`start` in a thread or :meth:`run` in the foreground."""

    def __init__(self, repository: ModelRepository, *, host: str = "127.0.0.1", port: int = 0,
                 max_batch_size: int = 0, max_batch_time: float = 0.0, max_body_bytes: int = DEFAULT_MAX_BODY,
                 max_rows: int = 100_000, token: str | None = None, workers: int | None = None,
                 registry: CollectorRegistry | None = None, log_level: str = "warning") -> None:
        self.repository = repository
        self.host = host
        self.port = port
        self.plane = DataPlane(repository, max_batch_size=max_batch_size, max_batch_time=max_batch_time,
                               max_rows=max_rows, workers=workers, metrics=ServeMetrics(registry))
        self.app = create_app(self.plane, max_body_bytes=max_body_bytes, token=token)
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> socket.socket:
        """Bind the listening socket now (``port=0`` picks a free port; :attr:`url` names it)."""
        if self._socket is not None:
            return self._socket
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it every response
        # (headers, then body) waits ~40 ms for a delayed ACK (Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)  # connections queue from now on, even before uvicorn runs: the URL works once printed
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, backlog=1024)
        self._server = uvicorn.Server(config)
        return sock

    def start(self, timeout: float = 10.0) -> "ModelServer":
        """Serve from a background thread; returns once the server accepts connections."""
        sock = self.bind()
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="tidal-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"model server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def run(self) -> None:
        """Serve in the foreground until SIGINT / SIGTERM, then shut down in order."""
        sock = self.bind()
        assert self._server is not None
        log.info("serving %s on %s", ", ".join(self.repository.names()) or "no models", self.url)
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal that stopped it; handled here, the ordered close below still runs
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: setattr(self._server, "should_exit", True))
        try:
            self._server.run(sockets=[sock])
        finally:
            self._close()

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, stop followers and scoring threads."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._close()

    def _close(self) -> None:
        self.repository.close()
        self.plane.close()
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
