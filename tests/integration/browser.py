"""Headless Debian Chromium, driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No extra Python package: Chromium reads NUL-terminated JSON commands on fd 3 and writes
responses and events on fd 4. Enough of the protocol to open a page, evaluate JavaScript in
it (to read what the page rendered) and take a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--no-default-browser-check"]


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """``with Chromium(tmp) as b: b.open(url); b.wait_for("js expr"); b.screenshot(path)``."""

    def __init__(self, workdir: Path, width: int = 1400, height: int = 1000, binary: str = CHROMIUM) -> None:
        self.workdir = Path(workdir)
        self.width, self.height = width, height
        self.binary = binary
        self.proc: subprocess.Popen | None = None
        self.session: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.console: list[str] = []  # console messages and uncaught exceptions of the page

    # -- process and pipe ------------------------------------------------------------------
    def start(self) -> "Chromium":
        self.workdir.mkdir(parents=True, exist_ok=True)
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        args = [self.binary, *FLAGS, f"--user-data-dir={self.workdir / 'profile'}",
                f"--window-size={self.width},{self.height}", "--remote-debugging-pipe", "about:blank"]
        # the child sees our pipe ends as fds 3 (commands in) and 4 (messages out)
        shell = f'exec "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-'
        self._log = open(self.workdir / "chromium.log", "wb")
        self.proc = subprocess.Popen(["bash", "-c", shell, "chromium", *args], pass_fds=(to_r, from_w),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(to_r)
        os.close(from_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    for q in self._pending.values():
                        q.put({"error": {"message": "chromium closed the pipe"}})
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._pending.pop(msg["id"], None)
                    if q is not None:
                        q.put(msg)
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    args = msg["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    details = msg["params"]["exceptionDetails"]
                    self.console.append("exception: " + str(details.get("exception", {}).get("description")
                                                            or details.get("text")))

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        msg_id = next(self._ids)
        q: queue.Queue = queue.Queue(1)
        with self._lock:
            self._pending[msg_id] = q
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_w, data):]
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise ChromiumError(f"{method}: no answer within {timeout}s") from None
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=5)
        except (ChromiumError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for fd in (self._to_w, self._from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> "Chromium":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the page --------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Attach to the first tab and navigate it to ``url``."""
        deadline = time.monotonic() + 20
        while True:
            pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not pages:
            raise ChromiumError("no page target")
        self.session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
        self.send("Runtime.enable", session=self.session)
        self.send("Page.enable", session=self.session)
        self.send("Page.navigate", {"url": url}, session=self.session)

    def evaluate(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                      session=self.session)
        if "exceptionDetails" in r:
            raise ChromiumError(f"{expression!r}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value. Raises with the last value on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except ChromiumError as exc:  # the page may still be loading
                last = str(exc)
            else:
                if last:
                    return last
            time.sleep(0.25)
        raise AssertionError(f"page never satisfied {expression!r} within {timeout}s; last value {last!r}; "
                             f"console: {self.console[-5:]}")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": self.width, "height": max(self.height, size["height"]),
                                "scale": 1}}
        data = self.send("Page.captureScreenshot", params, session=self.session)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
