"""Kafka helpers for the suite: fill a topic, read an output topic's timestamps, steady-state rates."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from tidal.broker import TopicSpec, ensure_topics, produce_all
from tidal.config import KafkaSettings

PARTITIONS = 4
# Group membership settings for every group consumer in the suite (tidal's own defaults).
# They only shorten the embedded broker's group join (start-up, reported separately);
# steady-state throughput does not depend on them.
GROUP_TIMEOUTS = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000}


def fill(settings: KafkaSettings, topic: str, keys: Sequence[bytes], values: Sequence[bytes],
         partitions: int = PARTITIONS) -> float:
    """Produce the events (keyed: same key, same partition), uncompressed; returns seconds taken."""
    ensure_topics(settings, [TopicSpec(topic, partitions)])
    t0 = time.perf_counter()
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "log_level": 3,
                                         "queue.buffering.max.messages": 1_000_000}))
    produce_all(p, topic, values, keys)
    if p.flush(60):
        raise RuntimeError(f"could not fill {topic}")
    return time.perf_counter() - t0


def read_all(settings: KafkaSettings, topic: str, partitions: int = PARTITIONS, values: bool = False,
             timeout: float = 60.0) -> tuple[np.ndarray, list[bytes]]:
    """Every record of ``topic`` now (read to each partition's end): (timestamps in ms, values if asked)."""
    c = Consumer(settings.client_config({"group.id": "bench-reader", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "log_level": 3}))
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    ts: list[int] = []
    vals: list[bytes] = []
    open_parts = set(range(partitions))
    deadline = time.monotonic() + timeout
    try:
        while open_parts and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                err = m.error()
                if err:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(m.partition())
                        continue
                    raise RuntimeError(err.str())
                ts.append(m.timestamp()[1])
                if values:
                    vals.append(m.value())
    finally:
        c.close()
    return np.asarray(ts, dtype=np.int64), vals


def steady_rate(ts_ms: np.ndarray, trim: float = 0.1) -> dict:
    """Steady-state rate from output timestamps: the middle (1 - 2·trim) of the records.

    Start-up (group join, first fetches) and the tail (last partitions draining) fall outside
    the window. Returns events/s plus the window it was measured on.
    """
    n = len(ts_ms)
    if n < 10:
        return {"events_per_s": None, "window_events": n, "window_s": 0.0}
    ts = np.sort(ts_ms)
    lo, hi = int(n * trim), int(n * (1 - trim)) - 1
    span = (ts[hi] - ts[lo]) / 1000
    rate = (hi - lo) / span if span > 0 else None
    return {"events_per_s": rate, "window_events": int(hi - lo), "window_s": round(float(span), 3),
            "outputs": int(n), "first_output_ms": int(ts[0]), "last_output_ms": int(ts[-1])}


def delete_topics(settings: KafkaSettings, topics: Sequence[str]) -> None:
    """Free the embedded broker's memory (best effort)."""
    if not topics:
        return
    admin = AdminClient(settings.client_config({"log_level": 0}))
    try:
        for f in admin.delete_topics(list(topics), operation_timeout=10).values():
            try:
                f.result(15)
            except Exception:  # noqa: BLE001 - best effort
                pass
    except Exception:  # noqa: BLE001
        pass


def group_consumer(settings: KafkaSettings, group: str, extra: dict | None = None) -> Consumer:
    return Consumer(settings.client_config({"group.id": group, "auto.offset.reset": "earliest",
                                            "enable.auto.commit": False, "log_level": 3, **GROUP_TIMEOUTS,
                                            **(extra or {})}))
