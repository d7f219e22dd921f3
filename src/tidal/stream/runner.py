"""Run a pipeline in N worker processes that form one Kafka consumer group.

Kafka assigns the partitions; scaling out is starting more workers, here or on other
machines with the same pipeline file. The parent forwards SIGTERM/SIGINT to its workers,
waits for them to drain and commit, and exits with the worst exit status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tidal.config import KafkaSettings
from tidal.stream.spec import load_pipeline
from tidal.stream.worker import Worker

__all__ = ["run_worker", "spawn_workers", "spawn_worker", "wait_workers", "default_worker_id", "Progress", "progress_line"]

log = logging.getLogger("tidal.runner")


def default_worker_id(index: int = 0) -> str:
    """Stable across restarts on one host, distinct across hosts (used in transactional.id)."""
    return f"{socket.gethostname()}-{index}"


def run_worker(spec: str | Path, settings: KafkaSettings, worker_id: str | None = None,
               stats_file: str | Path | None = None, idle_exit_s: float | None = None,
               metrics_port: int | None = None, progress_s: float = 10.0) -> int:
    """Run one worker in this process until a signal; serve /metrics on ``metrics_port`` (0 or None: off);
    log a progress line every ``progress_s`` seconds while events flow (0: never)."""
    from tidal.broker.topics import ensure_topics

    pipeline = load_pipeline(spec)
    ensure_topics(settings, pipeline.topic_specs())
    worker = Worker(pipeline, settings, worker_id or default_worker_id())
    if metrics_port:
        port = worker.hooks.serve(metrics_port, worker.health)
        if port:
            log.info("metrics on http://%s:%d/metrics (TIDAL_METRICS_HOST)", os.environ.get("TIDAL_METRICS_HOST",
                                                                                              "127.0.0.1"), port)
    worker.install_signal_handlers()
    progress = Progress(worker, progress_s) if progress_s else None
    try:
        stats = worker.run(idle_exit_s=idle_exit_s)
    finally:
        if progress is not None:
            progress.stop()
    log.info("worker %s done: %s", worker.worker_id, stats.as_dict())
    if stats_file:
        Path(stats_file).write_text(json.dumps({"worker_id": worker.worker_id, **stats.as_dict()}))
    return 0


class Progress(threading.Thread):
    """Log one line every ``every`` seconds while the worker has input: rate, totals, DLQ by reason, lag.

    ``worker 0: 48,210 events/s, 1,204,332 in, 1,204,100 out, dlq 232 (wrong_type 230, too_large 2), lag 1,530``
    """

    def __init__(self, worker: Worker, every: float) -> None:
        super().__init__(name="tidal-progress", daemon=True)
        self.worker, self.every = worker, every
        self._stop = threading.Event()
        self.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        last_in, last_t = 0, time.monotonic()
        while not self._stop.wait(self.every):
            s, now = self.worker.stats, time.monotonic()
            if s.events_in == last_in and not self.worker.lag:
                continue  # quiet: nothing new to say
            log.info(progress_line(self.worker.worker_id, (s.events_in - last_in) / (now - last_t), s.events_in,
                                   s.outputs, dict(s.dlq), self.worker.lag))
            last_in, last_t = s.events_in, now


def progress_line(worker_id: str, rate: float, events_in: int, outputs: int, dlq: dict[str, int], lag: int) -> str:
    """One progress line (see :class:`Progress`).

    >>> progress_line("0", 48210.4, 1204332, 1204100, {"too_large": 2, "wrong_type": 230}, 1530)
    'worker 0: 48,210 events/s, 1,204,332 in, 1,204,100 out, dlq 232 (wrong_type 230, too_large 2), lag 1,530'
    """
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(dlq.items(), key=lambda kv: -kv[1]))
    total = sum(dlq.values())
    return (f"worker {worker_id}: {rate:,.0f} events/s, {events_in:,} in, {outputs:,} out, "
            f"dlq {total:,}{f' ({reasons})' if reasons else ''}, lag {lag:,}")


def spawn_workers(spec: str | Path, n: int, settings: KafkaSettings, kafka_config: str | None = None,
                  stats_file: str | Path | None = None, idle_exit_s: float | None = None,
                  log_level: str = "INFO", metrics_port: int | None = None,
                  progress_s: float = 10.0) -> list[subprocess.Popen]:
    """Start ``n`` worker processes (``tidal run SPEC --workers 1 --worker-index i``); worker i
    serves metrics on ``metrics_port + i``."""
    return [spawn_worker(spec, i, settings, kafka_config, stats_file, idle_exit_s, log_level, metrics_port,
                         progress_s) for i in range(n)]


def spawn_worker(spec: str | Path, i: int, settings: KafkaSettings, kafka_config: str | None = None,
                 stats_file: str | Path | None = None, idle_exit_s: float | None = None,
                 log_level: str = "INFO", metrics_port: int | None = None,
                 progress_s: float = 10.0) -> subprocess.Popen:
    """Start worker process ``i`` (see :func:`spawn_workers`; the autoscaler starts them one at a time)."""
    env = {**os.environ, "TIDAL_BOOTSTRAP_SERVERS": settings.bootstrap}
    cmd = [sys.executable, "-m", "tidal", "run", str(spec), "--workers", "1", "--worker-index", str(i),
           "--log-level", log_level]
    if kafka_config:
        cmd += ["--kafka-config", kafka_config]
    if stats_file:
        path = Path(stats_file)
        cmd += ["--stats-file", str(path.with_name(f"{path.stem}-{i}{path.suffix}"))]
    if idle_exit_s is not None:
        cmd += ["--idle-exit", str(idle_exit_s)]
    cmd += ["--metrics-port", str(metrics_port + i if metrics_port else 0), "--progress", str(progress_s)]
    return subprocess.Popen(cmd, env=env)


def wait_workers(procs: list[subprocess.Popen], timeout: float | None = None) -> int:
    """Wait for the workers, forwarding SIGTERM/SIGINT to them; the worst exit status."""

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        codes = []
        for p in procs:
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            codes.append(p.wait(left))
        return max((abs(c) for c in codes), default=0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
