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
import time
from pathlib import Path

from tidal.config import KafkaSettings
from tidal.stream.spec import load_pipeline
from tidal.stream.worker import Worker

__all__ = ["run_worker", "spawn_workers", "wait_workers", "default_worker_id"]

log = logging.getLogger("tidal.runner")


def default_worker_id(index: int = 0) -> str:
    """Stable across restarts on one host, distinct across hosts (used in transactional.id)."""
    return f"{socket.gethostname()}-{index}"


def run_worker(spec: str | Path, settings: KafkaSettings, worker_id: str | None = None,
               stats_file: str | Path | None = None, idle_exit_s: float | None = None,
               metrics_port: int | None = None) -> int:
    """Run one worker in this process until a signal; serve /metrics on ``metrics_port`` (0 or None: off)."""
    from tidal.broker.topics import ensure_topics

    pipeline = load_pipeline(spec)
    ensure_topics(settings, pipeline.topic_specs())
    worker = Worker(pipeline, settings, worker_id or default_worker_id())
    if metrics_port:
        port = worker.hooks.serve(metrics_port)
        if port:
            log.info("metrics on http://%s:%d/metrics (TIDAL_METRICS_HOST)", os.environ.get("TIDAL_METRICS_HOST",
                                                                                              "127.0.0.1"), port)
    worker.install_signal_handlers()
    stats = worker.run(idle_exit_s=idle_exit_s)
    log.info("worker %s done: %s", worker.worker_id, stats.as_dict())
    if stats_file:
        Path(stats_file).write_text(json.dumps({"worker_id": worker.worker_id, **stats.as_dict()}))
    return 0


def spawn_workers(spec: str | Path, n: int, settings: KafkaSettings, kafka_config: str | None = None,
                  stats_file: str | Path | None = None, idle_exit_s: float | None = None,
                  log_level: str = "INFO", metrics_port: int | None = None) -> list[subprocess.Popen]:
    """Start ``n`` worker processes (``tidal run SPEC --workers 1 --worker-index i``); worker i
    serves metrics on ``metrics_port + i``."""
    env = {**os.environ, "TIDAL_BOOTSTRAP_SERVERS": settings.bootstrap}
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "tidal", "run", str(spec), "--workers", "1", "--worker-index", str(i),
               "--log-level", log_level]
        if kafka_config:
            cmd += ["--kafka-config", kafka_config]
        if stats_file:
            path = Path(stats_file)
            cmd += ["--stats-file", str(path.with_name(f"{path.stem}-{i}{path.suffix}"))]
        if idle_exit_s is not None:
            cmd += ["--idle-exit", str(idle_exit_s)]
        cmd += ["--metrics-port", str(metrics_port + i if metrics_port else 0)]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


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
