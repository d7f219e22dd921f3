"""A real PostgreSQL server on loopback for tests, from the Debian package's binaries.

PostgreSQL refuses to run as root: when the tests run as root the server runs as the
``postgres`` OS user (created by the package) in a temporary folder that user owns. Trust
authentication on 127.0.0.1 only. :func:`pg_or_skip` skips with the reason when the
binaries (or that user) are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["PgServer", "pg_or_skip"]


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """initdb once, then :meth:`start` / :meth:`stop` (fast shutdown) on the same port and data."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="tidal-pg-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.sock.mkdir()
        self._own(self.sock)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                   "-E", "UTF8", "--locale", "C"])

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=3"

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _demote(self):
        if self._user is None:
            return None
        uid, gid = self._user.pw_uid, self._user.pw_gid

        def demote() -> None:
            os.setgid(gid)
            os.setuid(uid)
        return demote

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True, preexec_fn=self._demote(), cwd=self.root)

    def start(self, timeout: float = 30.0) -> None:
        import psycopg

        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.sock), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "shared_buffers=32MB", "-c", "max_connections=40"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._demote(), cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, open transactions rolled back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def pg_or_skip() -> PgServer:
    """A started server, or skip the test module with the reason."""
    bindir = _bindir()
    if bindir is None or not (bindir / "postgres").exists():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; `make system-deps`)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL as")
    server = PgServer(bindir)
    server.start()
    return server
