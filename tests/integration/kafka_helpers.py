"""Produce and read topics in tests, with the real client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(settings, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
    p = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    for i, v in enumerate(values):
        p.produce(topic, v, keys[i] if keys else str(i).encode())
    assert p.flush(30) == 0


def read_all(settings, topic: str, partitions: int, isolation: str = "read_uncommitted",
             timeout: float = 20.0) -> list[Any]:
    """Every message of ``topic`` now, read to each partition's end."""
    c = Consumer(settings.client_config({"group.id": "test-reader", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "isolation.level": isolation,
                                         "log_level": 3}))
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, open_parts = [], set(range(partitions))
    deadline = time.monotonic() + timeout
    try:
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(m.partition())
                        continue
                    raise AssertionError(m.error().str())
                out.append(m)
        assert not open_parts, f"{topic}: partitions {open_parts} did not reach their end"
        return out
    finally:
        c.close()


def wait_for(settings, topics: list[tuple[str, int]], count: int, timeout: float = 60.0) -> int:
    """Wait until the topics hold at least ``count`` messages together; returns the count."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = sum(len(read_all(settings, t, p)) for t, p in topics)
        if n >= count:
            return n
        time.sleep(0.3)
    raise AssertionError(f"only {n} of {count} messages arrived within {timeout}s")


def records(msgs: list[Any]) -> list[dict]:
    return [orjson.loads(m.value()) for m in msgs]


def run_until(worker, total: int, timeout: float = 60.0) -> None:
    """Run ``worker`` in a thread until it has consumed ``total`` events."""
    import threading

    def check(w, _batch) -> None:
        if w.stats.events_in >= total:
            w.stop()

    worker.on_batch = check
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"worker consumed {worker.stats.events_in} of {total} within {timeout}s"


STARTED: list[subprocess.Popen] = []  # killed after each test (tests/conftest.py): a failed test leaves no process


def tidal_process(settings, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """``python -m tidal ARGS`` against the test broker, killed after the test if still running."""
    env = {**os.environ, "TIDAL_BOOTSTRAP_SERVERS": settings.bootstrap, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "tidal", *args], env=env, **popen)
    STARTED.append(proc)
    return proc
