"""A local Mosquitto MQTT broker in a child process, for demos and tests.

Listens on loopback only, anonymous, with persistence in its own folder, so persistent
sessions and their queued QoS 1 messages survive :meth:`Mosquitto.restart` (Mosquitto
writes its database when it stops cleanly).

>>> mosquitto_binary() is None or mosquitto_binary().endswith("mosquitto")
True
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["Mosquitto", "mosquitto_binary", "MOSQUITTO_MISSING"]

MOSQUITTO_MISSING = ("mosquitto is not installed: install it with `sudo apt install mosquitto` "
                     "(Debian/Ubuntu) or `brew install mosquitto` (macOS)")


def mosquitto_binary() -> str | None:
    """The path of the ``mosquitto`` broker binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(p, os.X_OK):
            return p
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """``with Mosquitto() as m: m.port``: a broker on 127.0.0.1, stopped (and its folder removed) on exit.

    ``max_queued`` is Mosquitto's ``max_queued_messages`` (messages kept per client beyond those
    in flight; Mosquitto's default of 1,000 drops QoS 1 messages for a slow or absent subscriber).
    """

    def __init__(self, port: int = 0, folder: str | os.PathLike[str] | None = None, max_queued: int = 1_000_000,
                 max_inflight: int = 1000) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError(MOSQUITTO_MISSING)
        self.binary = binary
        self.port = port or _free_port()
        self._own_folder = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="tidal-mosquitto-"))
        self.max_queued, self.max_inflight = max_queued, max_inflight
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        # As root, Mosquitto would switch to the `mosquitto` user (who cannot write our folder):
        # name the user we run as, which is a no-op for anyone else.
        user = pwd.getpwuid(os.getuid()).pw_name
        conf = self.folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {self.folder}/\nuser {user}\n"
                        f"max_queued_messages {self.max_queued}\nmax_inflight_messages {self.max_inflight}\n"
                        f"log_dest file {self.folder}/mosquitto.log\n")
        return conf

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        """Start the broker and wait until it accepts connections."""
        conf = self._config()
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.folder / "mosquitto.log"
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {err.strip()} "
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: Mosquitto saves its persistence database)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port with the same data."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
