"""An ASGI app on uvicorn, bound at once, served from a thread or in the foreground.

The model server, the dashboard and HTTP ingest all start this way: :meth:`HttpServer.bind`
opens the listening socket first (``port=0`` gets a free port that :attr:`HttpServer.url`
names at once, and connections queue from then on), :meth:`HttpServer.start` serves from a
daemon thread and returns once uvicorn accepts, :meth:`HttpServer.run` serves until SIGINT /
SIGTERM. Subclasses add what runs beside the app with :meth:`_starting` and :meth:`_close`.

Overload is answered, not queued without end: past ``max_in_flight`` requests at once (default
256, ``$TIDAL_HTTP_MAX_IN_FLIGHT``) a request gets ``503`` with ``Retry-After: 1`` at once (it
costs no decoding, no model call); past ``limit_concurrency`` connections uvicorn itself answers
503. Idle keep-alive connections close after ``keep_alive_s``.

>>> from starlette.applications import Starlette
>>> import httpx
>>> with HttpServer(Starlette(), port=0).start() as s:
...     httpx.get(s.url + "/nothing").status_code
404
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any, Self

import uvicorn

__all__ = ["HttpServer", "Overload"]


class Overload:
    """ASGI middleware: at most ``limit`` HTTP requests in the app at once; the next get 503 and
    ``Retry-After`` without reaching it (``rejected`` counts them)."""

    def __init__(self, app: Any, limit: int, retry_after_s: int = 1) -> None:
        self.app, self.limit, self.retry_after = app, limit, str(retry_after_s).encode()
        self.in_flight = self.rejected = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:  # one event loop: no lock needed between check and increment
            self.rejected += 1
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", self.retry_after)]})
            await send({"type": "http.response.body",
                        "body": b'{"error": "overloaded: too many requests in flight; retry after 1 s"}'})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class HttpServer:
    """Serve ``app`` on ``host:port`` with uvicorn (``thread_name`` names the serving thread)."""

    thread_name = "tidal-http"
    graceful_s = 5.0
    limit_concurrency = 512  # connections + requests in flight; over it uvicorn answers 503 at once
    keep_alive_s = 5.0  # an idle keep-alive connection is closed after this

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 max_in_flight: int | None = None) -> None:
        limit = max_in_flight or int(os.environ.get("TIDAL_HTTP_MAX_IN_FLIGHT", "256"))
        self.overload = Overload(app, limit)
        self.app, self.host, self.port, self.log_level = self.overload, host, port, log_level
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
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level=self.log_level, access_log=False,
                                                     lifespan="off", timeout_graceful_shutdown=self.graceful_s,
                                                     backlog=1024, limit_concurrency=self.limit_concurrency,
                                                     timeout_keep_alive=self.keep_alive_s,
                                                     h11_max_incomplete_event_size=64 * 1024))  # headers
        return sock

    def _starting(self) -> None:
        """Called once, right before uvicorn serves (start background work here)."""

    def start(self, timeout: float = 10.0) -> Self:
        """Serve from a background thread; returns once the server accepts connections."""
        sock = self.bind()
        self._starting()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.thread_name} on {self.url} did not start")
            time.sleep(0.01)
        return self

    def run(self) -> None:
        """Serve in the foreground until SIGINT / SIGTERM; finish the requests in flight, then close."""
        sock = self.bind()
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal that stopped it; handled here, the ordered close below still runs
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: setattr(self._server, "should_exit", True))
        self._starting()
        try:
            self._server.run(sockets=[sock])
        finally:
            self._close()

    def stop(self) -> None:
        """Stop accepting, finish the requests in flight, then close."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._close()

    def _close(self) -> None:
        """Release what the server holds; subclasses close their own parts, then call this."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
